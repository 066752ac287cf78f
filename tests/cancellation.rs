//! `cancellable` and `Cancellation`: the token trips when the future is dropped before
//! it completed, never after; hooks run once, in order, where the future is dropped; a
//! hook's panic there is contained (rule 17).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::Arc;

use apm_tap::{cancellable, Cancellation, Error};
use futures::FutureExt;

use common::DropCounter;

/// A future that stays pending, holding `token` for the test.
fn pending_with(
    tokens: mpsc::Sender<Cancellation>,
) -> apm_tap::Cancellable<impl std::future::Future<Output = ()>> {
    cancellable(move |cancellation| async move {
        tokens.send(cancellation).unwrap();
        std::future::pending::<()>().await
    })
}

#[test]
fn dropping_before_completion_trips_the_token_and_runs_each_hook_once_in_order() {
    let (tokens, token) = mpsc::channel();
    let mut future = Box::pin(pending_with(tokens));
    assert!((&mut future).now_or_never().is_none());
    let token = token.recv().unwrap();
    let (runs, ran) = mpsc::channel();
    for hook in 0..3 {
        let runs = runs.clone();
        token.on_cancel(move || runs.send(hook).unwrap());
    }
    assert!(!token.is_cancelled());
    assert_eq!(format!("{token:?}"), "Cancellation(\"running\")");
    drop(future);
    assert!(token.is_cancelled());
    assert_eq!(ran.try_iter().collect::<Vec<_>>(), [0, 1, 2]);
    // Given after the cancellation: runs at once, here.
    token.on_cancel(move || runs.send(3).unwrap());
    assert_eq!(ran.try_iter().collect::<Vec<_>>(), [3]);
    assert_eq!(format!("{token:?}"), "Cancellation(\"cancelled\")");
}

#[test]
fn completing_drops_the_hooks_unrun_and_the_token_never_trips() {
    let drops = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let (tokens, token) = mpsc::channel();
    let (kept, counted) = (Arc::clone(&drops), Arc::clone(&runs));
    let ready = cancellable(move |cancellation: Cancellation| {
        let guard = DropCounter(kept);
        cancellation.on_cancel(move || {
            let _guard = guard;
            counted.fetch_add(1, SeqCst);
        });
        tokens.send(cancellation).unwrap();
        async { 7 }
    });
    assert_eq!(futures::executor::block_on(ready), 7);
    let token = token.recv().unwrap();
    assert!(!token.is_cancelled());
    assert_eq!((runs.load(SeqCst), drops.load(SeqCst)), (0, 1));
    // Given after completion: dropped unrun.
    let (guard, counted) = (DropCounter(Arc::clone(&drops)), Arc::clone(&runs));
    token.on_cancel(move || {
        let _guard = guard;
        counted.fetch_add(1, SeqCst);
    });
    assert_eq!((runs.load(SeqCst), drops.load(SeqCst)), (0, 2));
    assert_eq!(format!("{token:?}"), "Cancellation(\"completed\")");
}

#[test]
fn a_hook_panicking_where_the_future_is_dropped_is_contained_and_the_next_one_runs() {
    let (tokens, token) = mpsc::channel();
    let mut future = Box::pin(pending_with(tokens));
    assert!((&mut future).now_or_never().is_none());
    let token = token.recv().unwrap();
    let (runs, ran) = mpsc::channel();
    token.on_cancel(|| panic!("hook panic"));
    token.on_cancel(move || runs.send("second").unwrap());
    drop(future);
    assert_eq!(ran.try_recv(), Ok("second"));
}

#[test]
fn a_hook_given_after_cancellation_panics_into_its_caller() {
    let (tokens, token) = mpsc::channel();
    let mut future = Box::pin(pending_with(tokens));
    assert!((&mut future).now_or_never().is_none());
    drop(future);
    let token = token.recv().unwrap();
    let panicked = std::panic::catch_unwind(|| token.on_cancel(|| panic!("late hook")));
    assert_eq!(
        panicked.unwrap_err().downcast_ref::<&str>(),
        Some(&"late hook")
    );
}

#[test]
fn an_apm_cancel_reaches_a_thread_the_operation_handed_the_token_to() {
    let (started, running) = mpsc::channel();
    let (stopped, stop) = mpsc::channel();
    let scan = cancellable(|cancellation| async move {
        let (done, result) = futures::channel::oneshot::channel::<u32>();
        std::thread::spawn(move || {
            let (woken, wake) = mpsc::channel();
            cancellation.on_cancel(move || woken.send(()).unwrap());
            started.send(()).unwrap();
            wake.recv().unwrap();
            stopped.send(cancellation.is_cancelled()).unwrap();
            drop(done);
        });
        result.await
    });
    let handle = apm_tap::begin(scan);
    running.recv().unwrap();
    handle.cancel();
    assert_eq!(stop.recv(), Ok(true));
    assert_eq!(handle.end(), Err(Error::Cancelled));
}

/// Ready with 5; its `Drop` panics.
struct DropPanics;

impl std::future::Future for DropPanics {
    type Output = u32;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<u32> {
        std::task::Poll::Ready(5)
    }
}

impl Drop for DropPanics {
    fn drop(&mut self) {
        panic!("drop of the finished future panicked");
    }
}

#[test]
fn rule_17_a_panicking_drop_of_the_finished_future_loses_neither_output_nor_completion() {
    let (tokens, token) = mpsc::channel();
    let handle = apm_tap::begin(cancellable(move |cancellation| {
        tokens.send(cancellation).unwrap();
        DropPanics
    }));
    assert_eq!(handle.end(), Ok(5));
    let token = token.recv().unwrap();
    assert_eq!(format!("{token:?}"), "Cancellation(\"completed\")");
}
