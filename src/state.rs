//! The caller's state value carried by a handle (`IAsyncResult.AsyncState`).

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// The state value a caller gives to a Begin method and reads back from the handle.
///
/// In APM, `BeginXxx(args, callback, state)` stores `state` in the handle so the callback
/// can tell which operation finished. `State` holds any `Send + Sync + 'static` value, or
/// nothing; cloning it is cheap (one reference count) and every clone sees the same value.
///
/// # Examples
///
/// ```
/// use apm_tap::State;
///
/// let state = State::new("request 17");
/// assert_eq!(state.downcast_ref::<&str>(), Some(&"request 17"));
/// assert_eq!(state.downcast_ref::<u32>(), None);
/// assert!(State::none().is_none());
/// ```
#[derive(Clone, Default)]
pub struct State(Option<Arc<dyn Any + Send + Sync>>);

impl State {
    /// A state holding `value`.
    ///
    /// # Examples
    ///
    /// ```
    /// let state = apm_tap::State::new(42_u64);
    /// assert_eq!(state.downcast_ref::<u64>(), Some(&42));
    /// ```
    pub fn new<V: Any + Send + Sync>(value: V) -> Self {
        State(Some(Arc::new(value)))
    }

    /// No state (`null` in .NET).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(apm_tap::State::none().downcast_ref::<u8>().is_none());
    /// ```
    pub const fn none() -> Self {
        State(None)
    }

    /// Whether this state holds no value.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!apm_tap::State::new(()).is_none());
    /// ```
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    /// The value, if there is one and it is a `V`.
    ///
    /// # Examples
    ///
    /// ```
    /// let state = apm_tap::State::new(String::from("abc"));
    /// assert_eq!(state.downcast_ref::<String>().map(String::as_str), Some("abc"));
    /// ```
    pub fn downcast_ref<V: Any>(&self) -> Option<&V> {
        self.0.as_deref()?.downcast_ref()
    }

    /// Whether `self` and `other` are clones of one state (or both empty).
    ///
    /// # Examples
    ///
    /// ```
    /// let a = apm_tap::State::new(1);
    /// assert!(a.ptr_eq(&a.clone()));
    /// assert!(!a.ptr_eq(&apm_tap::State::new(1)));
    /// ```
    pub fn ptr_eq(&self, other: &State) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("State(..)"),
            None => f.write_str("State(None)"),
        }
    }
}
