//! `apm_tap::ffi`: a C-shaped callback API (`start(args, callback, user_data)`) wrapped
//! into futures. Each completion path, each misuse by the library (a second callback, a
//! late one, one of another type, `NULL`), cancellation with the request kept until the
//! callback confirms, and panics in `start` and in the hook.
#![cfg(feature = "ffi")]

mod common;

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use apm_tap::ffi::{self, from_c, Refused, UserData};
use apm_tap::{Abandonment, Error};
use common::DropCounter;
use futures::executor::block_on;
use futures::FutureExt;

/// A request the "library" writes to until it calls back: counts its drops.
struct Request(#[allow(dead_code)] DropCounter); // Held for its drop count only.

fn counted() -> (Arc<AtomicUsize>, Request) {
    let drops = Arc::new(AtomicUsize::new(0));
    (Arc::clone(&drops), Request(DropCounter(drops)))
}

/// A future whose `start` hands the user data out on a channel: the test is the library.
fn started_elsewhere(
    request: Request,
) -> (
    impl std::future::Future<Output = Result<u32, Error>> + Unpin,
    mpsc::Receiver<UserData>,
) {
    let (tx, rx) = mpsc::channel();
    let future = from_c(move |user_data| {
        tx.send(user_data).unwrap();
        Ok::<Request, u32>(request)
    });
    (future, rx)
}

#[test]
fn a_callback_from_another_thread_completes_once_and_the_request_is_dropped_after_it() {
    let (drops, request) = counted();
    let (mut future, rx) = started_elsewhere(request);
    assert!((&mut future).now_or_never().is_none());
    let user_data = rx.recv().unwrap();
    thread::spawn(move || ffi::trampoline::<u32>(user_data.as_ptr(), 5))
        .join()
        .unwrap();
    assert_eq!(
        drops.load(SeqCst),
        0,
        "dropped before the future was done with it"
    );
    assert_eq!(block_on(future), Ok(5));
    assert_eq!(drops.load(SeqCst), 1);
}

#[test]
fn a_callback_inside_start_completes_the_operation() {
    let (drops, request) = counted();
    let future = from_c(move |user_data| {
        ffi::trampoline_last::<u32>(9, user_data.as_ptr());
        Ok::<Request, u32>(request)
    });
    assert_eq!(block_on(future), Ok(9));
    assert_eq!(drops.load(SeqCst), 1);
}

#[test]
fn a_refused_start_is_the_result_and_its_user_data_is_stale() {
    let (tx, rx) = mpsc::channel();
    let future = from_c(move |user_data| {
        tx.send(user_data).unwrap();
        Err::<(), i32>(-22)
    });
    assert_eq!(block_on(future), Ok(-22));
    let late = rx.recv().unwrap();
    assert_eq!(late.complete(1_i32), Err(Refused::Stale(1)));
}

/// A library that calls back twice: the second call is refused, counted, and its
/// value handed back; nothing is dropped twice.
#[test]
fn a_second_callback_is_refused_and_counted() {
    let (drops, request) = counted();
    let (future, rx) = started_elsewhere(request);
    let waiter = thread::spawn(move || block_on(future));
    let user_data = rx.recv().unwrap();
    let before = ffi::refused_callbacks();
    assert_eq!(user_data.complete(3_u32), Ok(()));
    let value_drops = Arc::new(AtomicUsize::new(0));
    let second = DropCounter(Arc::clone(&value_drops));
    match user_data.complete(second) {
        Err(Refused::Stale(back)) => drop(back),
        other => panic!("not refused as stale: {:?}", other.map_err(|_| ())),
    }
    assert_eq!(value_drops.load(SeqCst), 1);
    assert!(ffi::refused_callbacks() > before);
    assert_eq!(waiter.join().unwrap(), Ok(3));
    assert_eq!(drops.load(SeqCst), 1);
}

#[test]
fn a_callback_of_another_type_is_refused_and_changes_nothing() {
    let (future, rx) = started_elsewhere(counted().1);
    let waiter = thread::spawn(move || block_on(future));
    let user_data = rx.recv().unwrap();
    assert_eq!(user_data.complete(3_i64), Err(Refused::WrongType(3)));
    assert_eq!(user_data.never::<i64>(), Err(Refused::WrongType(())));
    assert_eq!(user_data.complete(4_u32), Ok(()));
    assert_eq!(waiter.join().unwrap(), Ok(4));
}

#[test]
fn a_null_user_data_is_refused() {
    let before = ffi::refused_callbacks();
    ffi::trampoline::<u8>(std::ptr::null_mut(), 1);
    assert!(ffi::refused_callbacks() > before);
    assert_eq!(UserData::from_ptr(std::ptr::null_mut()), None);
}

#[test]
fn never_abandons_the_operation_and_drops_the_request() {
    let (drops, request) = counted();
    let (future, rx) = started_elsewhere(request);
    let waiter = thread::spawn(move || block_on(future));
    let user_data = rx.recv().unwrap();
    assert_eq!(user_data.never::<u32>(), Ok(()));
    assert_eq!(
        waiter.join().unwrap(),
        Err(Error::Abandoned(Abandonment::CallbackDropped))
    );
    assert_eq!(drops.load(SeqCst), 1);
    assert_eq!(user_data.complete(1_u32), Err(Refused::Stale(1)));
}

/// A started operation of result type `T` whose cancel hook counts its runs: the
/// future, the user data the "library" got, the hook count and the request's drops.
fn hooked<T: Send + 'static>() -> (
    impl std::future::Future<Output = Result<T, Error>> + Unpin,
    mpsc::Receiver<UserData>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let (drops, request) = counted();
    let hooks = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hooks);
    let (tx, rx) = mpsc::channel();
    let mut future = from_c(move |user_data| {
        tx.send(user_data).unwrap();
        Ok::<Request, T>(request)
    })
    .on_cancel(move |_request: &mut Request| {
        h.fetch_add(1, SeqCst);
    });
    assert!((&mut future).now_or_never().is_none());
    (future, rx, hooks, drops)
}

/// libuv's `uv_cancel`: the hook runs once with the request, which stays alive until
/// the library's callback confirms; the callback's value is then dropped.
#[test]
fn a_dropped_future_cancels_and_keeps_the_request_until_the_callback() {
    let (future, rx, hooks, drops) = hooked::<DropCounter>();
    drop(future);
    assert_eq!(hooks.load(SeqCst), 1);
    assert_eq!(
        drops.load(SeqCst),
        0,
        "the library may still write to the request"
    );
    let user_data = rx.recv().unwrap();
    let value_drops = Arc::new(AtomicUsize::new(0));
    let value = DropCounter(Arc::clone(&value_drops));
    assert!(user_data.complete(value).is_ok());
    assert_eq!(drops.load(SeqCst), 1);
    assert_eq!(value_drops.load(SeqCst), 1);
    assert_eq!(hooks.load(SeqCst), 1);
}

/// A cancel that comes after the callback runs no hook: the request is dropped at once.
#[test]
fn a_future_dropped_after_the_callback_runs_no_hook() {
    let (future, rx, hooks, drops) = hooked::<u32>();
    rx.recv().unwrap().complete(2_u32).unwrap();
    drop(future);
    assert_eq!((hooks.load(SeqCst), drops.load(SeqCst)), (0, 1));
}

#[test]
fn a_panicking_hook_is_discarded_and_the_request_still_waits_for_the_callback() {
    let (drops, request) = counted();
    let (tx, rx) = mpsc::channel();
    let mut future = from_c(move |user_data| {
        tx.send(user_data).unwrap();
        Ok::<Request, u32>(request)
    })
    .on_cancel(|_request: &mut Request| panic!("hook panicked"));
    assert!((&mut future).now_or_never().is_none());
    drop(future);
    assert_eq!(drops.load(SeqCst), 0);
    rx.recv().unwrap().complete(1_u32).unwrap();
    assert_eq!(drops.load(SeqCst), 1);
}

#[test]
fn a_panicking_start_gives_the_operation_up() {
    let kept = Arc::new(Mutex::new(None));
    let k = Arc::clone(&kept);
    let future = from_c(move |user_data| -> Result<(), u8> {
        *k.lock().unwrap() = Some(user_data);
        panic!("start panicked");
    });
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| block_on(future)));
    assert!(panicked.is_err());
    let user_data = kept.lock().unwrap().take().unwrap();
    assert_eq!(user_data.complete(1_u8), Err(Refused::Stale(1)));
}

/// Operations from 8 threads, each completed by a callback on another thread: every
/// value arrives once, every request is dropped once.
#[test]
fn callbacks_from_many_threads_each_complete_one_operation() {
    const PER_THREAD: u32 = if cfg!(miri) { 3 } else { 500 };
    let drops = Arc::new(AtomicUsize::new(0));
    let (library, requests) = mpsc::channel::<UserData>();
    let library = Arc::new(Mutex::new(library));
    let callbacks = thread::spawn(move || {
        let mut n = 0;
        for user_data in requests {
            ffi::trampoline::<u32>(user_data.as_ptr(), 1);
            n += 1;
        }
        n
    });
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let library = Arc::clone(&library);
            let drops = Arc::clone(&drops);
            thread::spawn(move || {
                let mut sum = 0;
                for _ in 0..PER_THREAD {
                    let request = Request(DropCounter(Arc::clone(&drops)));
                    let tx = library.lock().unwrap().clone();
                    let future = from_c(move |user_data| {
                        tx.send(user_data).unwrap();
                        Ok::<Request, u32>(request)
                    });
                    sum += block_on(future).unwrap();
                }
                sum
            })
        })
        .collect();
    let total: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    drop(library);
    assert_eq!(callbacks.join().unwrap(), 8 * PER_THREAD);
    assert_eq!(total, 8 * PER_THREAD);
    assert_eq!(drops.load(SeqCst), 8 * PER_THREAD as usize);
}

/// The pointer the library gets is a number, never an address of ours.
#[test]
fn user_data_survives_the_round_trip_through_a_pointer() {
    let (tx, rx) = mpsc::channel();
    let future = from_c(move |user_data| {
        let raw: *mut c_void = user_data.as_ptr();
        tx.send(raw as usize).unwrap();
        Err::<(), u8>(0)
    });
    assert_eq!(block_on(future), Ok(0));
    let raw = rx.recv().unwrap();
    assert!(UserData::from_ptr(std::ptr::without_provenance_mut(raw)).is_some());
}
