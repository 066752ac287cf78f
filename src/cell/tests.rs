//! Unit tests of the cell's protocol.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::Wake;
use std::time::Duration;

use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::*;
use crate::track::{Kind, Origin};

/// A record for a cell made by hand (zero-sized without the `diagnostics` feature).
fn tracker() -> Tracker {
    Tracker::start(Origin::caller(Kind::Completer), false)
}

struct CountWakes(AtomicUsize);

impl Wake for CountWakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn counting_waker() -> (std::sync::Arc<CountWakes>, Waker) {
    let count = std::sync::Arc::new(CountWakes(AtomicUsize::new(0)));
    (std::sync::Arc::clone(&count), Waker::from(count))
}

/// The layout budget: the issue allows 64 bytes of overhead per pending operation
/// beyond a `u64` result; the cell takes 48, the owner counts included (they live in
/// the state word), so that with the allocator's header it fills one 64-byte block.
/// The `diagnostics` feature adds its record's pointer, and nothing without it.
#[test]
fn cell_stays_within_its_size_budget() {
    let overhead = std::mem::size_of::<Cell<u64>>() - std::mem::size_of::<u64>();
    let record = if cfg!(feature = "diagnostics") { 8 } else { 0 };
    assert_eq!(std::mem::size_of::<Tracker>(), record);
    assert!(overhead <= 48 + record, "{overhead} bytes");
}

#[test]
fn first_completion_wins_and_result_is_taken_once() {
    let (writer, mut handle) = new::<u8>(None, State::none(), tracker());
    assert!(!handle.is_completed());
    let mut other = handle.clone();
    handle.cancel();
    assert_eq!(writer.complete_quietly(Ok(2), false), Err(Ok(2)));
    assert!(handle.is_completed() && !handle.completed_synchronously());
    assert_eq!(other.try_take(), Some(Err(Error::Cancelled)));
    assert_eq!(handle.try_take(), Some(Err(Error::AlreadyEnded)));

    let (writer, mut handle) = new::<u8>(None, State::none(), tracker());
    assert_eq!(writer.complete_quietly(Ok(1), true), Ok(()));
    handle.cancel();
    assert!(handle.completed_synchronously());
    assert_eq!(handle.try_take(), Some(Ok(1)));
    assert_eq!(handle.try_take(), Some(Err(Error::AlreadyEnded)));
}

#[test]
fn each_entry_keeps_only_its_latest_waker() {
    let (writer, mut handle) = new::<u8>(None, State::none(), tracker());
    let other_handle = handle.clone();
    let (first, first_waker) = counting_waker();
    let (second, second_waker) = counting_waker();
    let (other, other_waker) = counting_waker();
    let (mut entry, mut other_entry) = (Entry::default(), Entry::default());
    let mut cx = Context::from_waker(&first_waker);
    assert!(handle.poll_take(&mut cx, &mut entry).is_pending());
    let mut cx = Context::from_waker(&second_waker);
    assert!(handle.poll_take(&mut cx, &mut entry).is_pending());
    let mut cx = Context::from_waker(&other_waker);
    assert!(other_handle
        .poll_completed(&mut cx, &mut other_entry)
        .is_pending());
    assert_eq!((entry.get(), other_entry.get()), (Some(0), Some(1)));
    assert_eq!(writer.complete_quietly(Ok(3), false), Ok(()));
    let wakes = |c: &CountWakes| c.0.load(SeqCst);
    assert_eq!((wakes(&first), wakes(&second), wakes(&other)), (0, 1, 1));
    let mut cx = Context::from_waker(&second_waker);
    assert_eq!(handle.poll_take(&mut cx, &mut entry), Poll::Ready(Ok(3)));
}

#[test]
fn released_entries_are_reused_and_not_woken() {
    let (writer, handle) = new::<u8>(None, State::none(), tracker());
    let second = handle.clone();
    let (gone, gone_waker) = counting_waker();
    let mut cx = Context::from_waker(&gone_waker);
    let (mut entry, mut second_entry) = (Entry::default(), Entry::default());
    assert!(handle.poll_completed(&mut cx, &mut entry).is_pending());
    assert!(second
        .poll_completed(&mut cx, &mut second_entry)
        .is_pending());
    handle.release_entry(entry.get().unwrap());
    second.release_entry(second_entry.get().unwrap());
    let (_, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let (mut next, mut second_next) = (Entry::default(), Entry::default());
    assert!(second.poll_completed(&mut cx, &mut next).is_pending());
    assert!(handle
        .poll_completed(&mut cx, &mut second_next)
        .is_pending());
    assert_eq!((next, second_next), (entry, second_entry));
    writer
        .complete_quietly(Err(Error::Cancelled), false)
        .unwrap();
    assert_eq!(gone.0.load(SeqCst), 0);
}

#[test]
fn callback_runs_once_after_the_result_is_stored() {
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let c = std::sync::Arc::clone(&calls);
    let callback: Callback<u8> = Box::new(move |handle: crate::AsyncResult<u8>| {
        assert!(handle.is_completed());
        c.fetch_add(1, SeqCst);
    });
    let (writer, handle) = new(Some(callback), State::none(), tracker());
    writer.complete_quietly(Ok(4), false).unwrap();
    handle.cancel();
    assert_eq!(calls.load(SeqCst), 1);
}

#[test]
fn the_last_owner_frees_an_untaken_result() {
    let drops = std::sync::Arc::new(AtomicUsize::new(0));
    struct Counted(std::sync::Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    // Handles gone first, then the writer stores: the value is dropped at once.
    let (writer, handle) = new(None, State::none(), tracker());
    drop(handle);
    assert!(writer
        .complete_quietly(Ok(Counted(std::sync::Arc::clone(&drops))), false)
        .is_ok());
    assert_eq!(drops.load(SeqCst), 1);
    // Writer first, then the last of two handles.
    let (writer, handle) = new(None, State::none(), tracker());
    let clone = handle.clone();
    assert!(writer
        .complete_quietly(Ok(Counted(std::sync::Arc::clone(&drops))), false)
        .is_ok());
    drop(handle);
    assert_eq!(drops.load(SeqCst), 1);
    drop(clone);
    assert_eq!(drops.load(SeqCst), 2);
}

#[test]
fn timed_wait_times_out_then_sees_completion() {
    let (writer, handle) = new::<u8>(None, State::none(), tracker());
    assert!(!handle.wait_until(Some(Instant::now() + Duration::from_millis(1))));
    let thread = std::thread::spawn(move || writer.complete_quietly(Ok(6), false));
    assert!(handle.wait_until(None));
    thread.join().unwrap().unwrap();
    assert!(handle.wait_until(Some(Instant::now())));
}
