//! The operations waiting for a C library's callback, by the number their `user_data`
//! carries: a slot index and a generation, never an address, so that a second or stale
//! callback finds nothing to free.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::unwind::drop_quietly;
use crate::Completer;

/// Bits of a key that hold the slot index; the generation takes the rest.
const INDEX_BITS: u32 = usize::BITS / 2;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;
/// Generations wrap within this many values, skipping 0 so that no key is 0 (`NULL`).
const GENERATIONS: usize = 1 << (usize::BITS - INDEX_BITS);

/// One operation's entry.
struct Slot {
    /// Changes every time the slot is freed: a key with another generation is stale.
    generation: usize,
    /// The operation's `Completer<T>`, erased; `None` when the slot is free.
    completer: Option<Box<dyn Any + Send>>,
    /// What a cancelled future left for the callback to drop (the request the library
    /// may still write to), with the slot.
    orphan: Option<Box<dyn Any + Send>>,
}

#[derive(Default)]
struct Registry {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    slots: Vec::new(),
    free: Vec::new(),
});

/// How many callbacks were refused: they found no operation (a second call, or one
/// after `never`), or one of another result type.
static REFUSED: AtomicUsize = AtomicUsize::new(0);

fn registry() -> MutexGuard<'static, Registry> {
    // No user code runs under the lock, so a poisoned lock holds consistent data.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn split(key: usize) -> (usize, usize) {
    (key & INDEX_MASK, key >> INDEX_BITS)
}

/// Registers `completer`; returns its key (never 0).
pub(super) fn insert<T: Send + 'static>(completer: Completer<T>) -> usize {
    let completer: Box<dyn Any + Send> = Box::new(completer);
    let mut registry = registry();
    let index = match registry.free.pop() {
        Some(index) => index,
        None => {
            let index = registry.slots.len();
            assert!(
                index <= INDEX_MASK,
                "too many operations waiting for C callbacks"
            );
            registry.slots.push(Slot {
                generation: 1,
                completer: None,
                orphan: None,
            });
            index
        }
    };
    let slot = &mut registry.slots[index];
    slot.completer = Some(completer);
    (slot.generation << INDEX_BITS) | index
}

/// What `take` found for a key.
pub(super) enum Taken<T> {
    /// The operation's completer: the slot is freed.
    Completer(Completer<T>),
    /// No operation has this key any more (its callback came, or `never`).
    Stale,
    /// The operation's result type is not `T`: nothing changed.
    WrongType,
}

/// Takes the completer of operation `key` and frees its slot, dropping an orphan left
/// there (after the lock is released).
pub(super) fn take<T: Send + 'static>(key: usize) -> Taken<T> {
    let (index, generation) = split(key);
    let mut registry = registry();
    let Some(slot) = registry
        .slots
        .get_mut(index)
        .filter(|slot| slot.generation == generation && slot.completer.is_some())
    else {
        drop(registry);
        REFUSED.fetch_add(1, Relaxed);
        return Taken::Stale;
    };
    if !slot
        .completer
        .as_ref()
        .is_some_and(|c| c.is::<Completer<T>>())
    {
        drop(registry);
        REFUSED.fetch_add(1, Relaxed);
        return Taken::WrongType;
    }
    let completer = slot.completer.take();
    let orphan = slot.orphan.take();
    slot.generation = (slot.generation + 1) % GENERATIONS;
    if slot.generation == 0 {
        slot.generation = 1;
    }
    registry.free.push(index);
    drop(registry);
    drop_quietly(orphan);
    let completer = completer
        .and_then(|completer| completer.downcast::<Completer<T>>().ok())
        .expect("the type was checked under the lock");
    Taken::Completer(*completer)
}

/// Leaves `orphan` for operation `key`'s callback to drop; hands it back if the
/// callback already came.
pub(super) fn orphan(key: usize, orphan: Box<dyn Any + Send>) -> Result<(), Box<dyn Any + Send>> {
    let (index, generation) = split(key);
    let mut registry = registry();
    match registry
        .slots
        .get_mut(index)
        .filter(|slot| slot.generation == generation && slot.completer.is_some())
    {
        Some(slot) => {
            slot.orphan = Some(orphan);
            Ok(())
        }
        None => Err(orphan),
    }
}

/// Counts a callback refused before it reached `take` (a `NULL` user data).
pub(super) fn refuse() {
    REFUSED.fetch_add(1, Relaxed);
}

/// How many callbacks found no operation since the process started.
pub(super) fn refused() -> usize {
    REFUSED.load(Relaxed)
}
