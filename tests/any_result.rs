//! `AnyAsyncResult`: a handle with its output type erased keeps every rule of the typed
//! handle (one result, dropped exactly once; cancel; wait; rule 12), and gives the typed
//! handle back only for the right type.

// `from_raw` is `unsafe`: the raw round trip is part of what is tested.
#![allow(unsafe_code)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use apm_tap::{AnyAsyncResult, AsyncCallback, AsyncResult, Builder, Error, State};
use common::DropCounter;

#[test]
fn the_typed_handle_comes_back_for_the_right_type_only() {
    let erased = apm_tap::begin(async { 41_u64 + 1 }).into_any().unwrap();
    assert!(erased.is::<u64>());
    assert!(!erased.is::<u32>());
    let erased = erased.downcast::<u32>().unwrap_err();
    let erased = erased.downcast::<i64>().unwrap_err();
    assert_eq!(erased.downcast::<u64>().unwrap().end(), Ok(42));
}

#[test]
fn a_completers_handle_is_handed_back_whole() {
    let (completer, handle) = apm_tap::Completer::<u8>::new();
    let handle = handle.into_any().unwrap_err();
    completer.complete(9).unwrap();
    assert_eq!(handle.end(), Ok(9));
}

#[test]
fn erased_handles_report_completion_state_and_synchronous_completion() {
    let erased = Builder::new()
        .state(State::new("tag"))
        .begin(async { 1 })
        .into_any()
        .unwrap();
    assert!(erased.is_completed());
    assert!(erased.completed_synchronously());
    assert_eq!(erased.state().downcast_ref::<&str>(), Some(&"tag"));

    let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
    let erased = apm_tap::begin(async move { rx.await.unwrap() })
        .into_any()
        .unwrap();
    assert!(!erased.is_completed());
    assert!(erased.state().is_none());
    assert_eq!(erased.wait_timeout(Duration::ZERO), Ok(false));
    tx.send(3).unwrap();
    erased.wait().unwrap();
    assert!(erased.is_completed());
    assert!(!erased.completed_synchronously());
    assert_eq!(erased.downcast::<u8>().unwrap().end(), Ok(3));
}

/// The value is dropped exactly once whichever handle goes last, erased or typed, and
/// never while one of them lives.
#[test]
fn a_value_nobody_ends_is_dropped_once_by_the_last_handle() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = DropCounter(Arc::clone(&drops));
    let typed = apm_tap::begin(async move { counter });
    let erased = typed.clone().into_any().unwrap();
    let second = erased.clone();
    assert!(second.ptr_eq(&erased));
    drop(typed);
    drop(erased);
    assert_eq!(drops.load(SeqCst), 0);
    drop(second);
    assert_eq!(drops.load(SeqCst), 1);
}

#[test]
fn only_one_handle_ends_the_operation() {
    let typed = apm_tap::begin(async { String::from("once") });
    let erased = typed.clone().into_any().unwrap();
    assert_eq!(typed.end().as_deref(), Ok("once"));
    let again = erased.downcast::<String>().unwrap();
    assert_eq!(again.end(), Err(Error::AlreadyEnded));
}

#[test]
fn cancel_through_an_erased_handle_runs_the_callback_once() {
    let (tx, rx) = mpsc::channel();
    let callback =
        AsyncCallback::new(move |handle: AsyncResult<()>| tx.send(handle.end()).unwrap());
    let erased = Builder::new()
        .callback(callback)
        .begin(std::future::pending::<()>())
        .into_any()
        .unwrap();
    erased.cancel();
    assert!(erased.is_completed());
    assert_eq!(rx.recv().unwrap(), Err(Error::Cancelled));
    erased.cancel();
    assert!(rx.try_recv().is_err(), "the callback ran twice");
}

#[test]
fn a_raw_pointer_round_trip_keeps_one_handle() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = DropCounter(Arc::clone(&drops));
    let raw = apm_tap::begin(async move { counter })
        .into_any()
        .unwrap()
        .into_raw()
        .unwrap();
    assert_eq!(drops.load(SeqCst), 0);
    // SAFETY: the raw handle keeps the operation alive.
    let completed = unsafe { AnyAsyncResult::with_raw(raw, |h| h.is_completed()) };
    assert_eq!(completed, Some(true));
    // SAFETY: as above; taken back once.
    let erased = unsafe { AnyAsyncResult::from_raw(raw) }.unwrap();
    assert!(erased.as_ptr() == raw);
    drop(erased);
    assert_eq!(drops.load(SeqCst), 1);
}

/// At most one raw handle is out; taking it back twice is caught while another handle
/// keeps the operation, and gives up nobody's ownership.
#[test]
fn a_raw_handle_taken_back_twice_is_caught() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = DropCounter(Arc::clone(&drops));
    let keeper = apm_tap::begin(async move { counter }).into_any().unwrap();
    let raw = keeper.clone().into_raw().unwrap();
    let refused = keeper.clone().into_raw().unwrap_err();
    drop(refused);
    // SAFETY: `keeper` keeps the operation alive throughout.
    unsafe {
        let taken = AnyAsyncResult::from_raw(raw).unwrap();
        assert!(AnyAsyncResult::from_raw(raw).is_none());
        assert_eq!(AnyAsyncResult::with_raw(raw, |_| ()), None);
        drop(taken);
    }
    assert_eq!(
        drops.load(SeqCst),
        0,
        "a second take gave up another handle"
    );
    // Out again once it was taken back.
    let raw = keeper.clone().into_raw().unwrap();
    // SAFETY: as above.
    drop(unsafe { AnyAsyncResult::from_raw(raw) }.unwrap());
    drop(keeper);
    assert_eq!(drops.load(SeqCst), 1);
}

/// `begin_raw`'s handle is out before the first poll: a callback inside Begin can take
/// it back, and the operation then lives until that callback's own handle goes.
#[test]
fn begin_raw_lets_a_callback_inside_begin_take_the_raw_handle() {
    let (tx, rx) = mpsc::channel();
    let callback = AsyncCallback::new(move |handle: AsyncResult<u8>| {
        let raw = handle.into_any().unwrap().as_ptr();
        // SAFETY: this callback's handle keeps the operation alive.
        let taken = unsafe { AnyAsyncResult::from_raw(raw) }.unwrap();
        // SAFETY: as above.
        let again = unsafe { AnyAsyncResult::from_raw(raw) };
        tx.send((taken.downcast::<u8>().unwrap().end(), again.is_none()))
            .unwrap();
    });
    let raw = Builder::new().callback(callback).begin_raw(async { 8_u8 });
    assert_eq!(rx.try_recv().unwrap(), (Ok(8), true));
    let _ = raw;
}

#[test]
fn begin_raw_without_a_callback_hands_out_the_only_reference() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = DropCounter(Arc::clone(&drops));
    let raw = Builder::new().begin_raw(async move { counter });
    assert_eq!(drops.load(SeqCst), 0);
    // SAFETY: the raw handle keeps the operation alive.
    let erased = unsafe { AnyAsyncResult::from_raw(raw) }.unwrap();
    assert!(erased.completed_synchronously());
    drop(erased);
    assert_eq!(drops.load(SeqCst), 1);
}

#[test]
fn erased_handles_wait_for_another_thread() {
    let (completer, handle) = apm_tap::Completer::<u16>::new();
    let erased = apm_tap::begin(handle).into_any().unwrap();
    let waiter = {
        let erased = erased.clone();
        thread::spawn(move || erased.wait())
    };
    completer.complete(5).unwrap();
    assert_eq!(waiter.join().unwrap(), Ok(()));
    let value = erased.downcast::<Result<u16, Error>>().unwrap().end();
    assert_eq!(value, Ok(Ok(5)));
}

/// Rule 12 holds through the erased handle: it knows the task's runtime.
#[test]
fn rule_12_erased_handles_refuse_to_deadlock() {
    common::current_thread().block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let erased = apm_tap::begin(async move { rx.await.unwrap() })
            .into_any()
            .unwrap();
        assert_eq!(erased.wait(), Err(Error::WouldDeadlock));
        assert_eq!(
            erased.wait_timeout(Duration::from_secs(60)),
            Err(Error::WouldDeadlock)
        );
        tx.send(1).unwrap();
        let handle = erased.downcast::<u8>().unwrap();
        assert_eq!(handle.await, Ok(1));
    });
}

#[test]
fn erased_handles_of_different_types_share_a_list() {
    let handles: Vec<AnyAsyncResult> = (0..8_u32)
        .map(|i| {
            if i % 2 == 0 {
                apm_tap::begin(async move { i }).into_any().unwrap()
            } else {
                apm_tap::begin(async move { i.to_string() })
                    .into_any()
                    .unwrap()
            }
        })
        .collect();
    let mut numbers = 0;
    let mut strings = 0;
    for handle in handles {
        match handle.downcast::<u32>() {
            Ok(handle) => numbers += handle.end().unwrap(),
            Err(handle) => strings += handle.downcast::<String>().unwrap().end().unwrap().len(),
        }
    }
    assert_eq!((numbers, strings), (2 + 4 + 6, 4));
}

/// Review finding: `with_raw` lent the raw handle's count, so another thread that took
/// the raw handle back and dropped it freed the operation under `f`. Now `f`'s handle
/// has a count of its own: the value is dropped only once `f` is done.
#[test]
fn with_raw_keeps_the_operation_while_another_thread_takes_the_raw_handle_back() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = DropCounter(Arc::clone(&drops));
    let raw = apm_tap::begin(async move { counter })
        .into_any()
        .unwrap()
        .into_raw()
        .unwrap();
    let raw_address = raw.as_ptr() as usize;
    // SAFETY: the raw handle keeps the operation alive when this is called.
    let seen = unsafe {
        AnyAsyncResult::with_raw(raw, |handle| {
            thread::spawn(move || {
                let raw = std::ptr::NonNull::new(raw_address as *mut ()).unwrap();
                // SAFETY: the raw handle is still out: taken back once, here.
                drop(AnyAsyncResult::from_raw(raw).unwrap());
            })
            .join()
            .unwrap();
            (drops.load(SeqCst), handle.is_completed())
        })
    };
    assert_eq!(
        seen,
        Some((0, true)),
        "the operation was freed under `with_raw`"
    );
    assert_eq!(drops.load(SeqCst), 1);
}

/// Review finding: a callback that panicked inside `begin_raw` left the raw handle's
/// count behind, so the operation and its value leaked. Now the panic gives it up, as
/// `begin` drops its handle.
#[test]
fn a_callback_panic_inside_begin_raw_gives_the_operation_up() {
    for raw in [false, true] {
        let drops = Arc::new(AtomicUsize::new(0));
        let counter = DropCounter(Arc::clone(&drops));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let builder = Builder::new().callback(|_: AsyncResult<DropCounter>| panic!("callback"));
            if raw {
                let _ = builder.begin_raw(async move { counter });
            } else {
                drop(builder.begin(async move { counter }));
            }
        }));
        assert!(caught.is_err());
        assert_eq!(drops.load(SeqCst), 1, "raw: {raw}");
    }
}

/// A callback inside `begin_raw` that takes the raw handle back and then panics: the
/// count is given up once, by the callback.
#[test]
fn a_callback_that_takes_the_raw_handle_then_panics_gives_it_up_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = DropCounter(Arc::clone(&drops));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Builder::new()
            .callback(|handle: AsyncResult<DropCounter>| {
                let raw = handle.into_any().unwrap().as_ptr();
                // SAFETY: this callback's handle keeps the operation alive.
                drop(unsafe { AnyAsyncResult::from_raw(raw) }.unwrap());
                panic!("callback");
            })
            .begin_raw(async move { counter })
    }));
    assert!(caught.is_err());
    assert_eq!(drops.load(SeqCst), 1);
}
