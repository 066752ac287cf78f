//! `stream::Puller`: a stream read with Begin/End pairs.

mod common;

use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use apm_tap::stream::{from_events, Buffer, Emitter, EventStream, Puller};
use apm_tap::{AsyncCallback, AsyncResult, Error, State};
use futures::StreamExt;

type Item = Option<Result<u32, Error>>;

/// A puller over a callback stream, and that stream's emitter (once the first pull
/// registered it).
fn puller() -> (Puller<EventStream<u32>>, mpsc::Receiver<Emitter<u32>>) {
    let (give, take) = mpsc::channel();
    let events = from_events(Buffer::unbounded(), move |emitter| {
        give.send(emitter).unwrap();
        Ok::<_, Error>(|| {})
    });
    (Puller::new(events), take)
}

#[test]
fn a_buffered_item_completes_the_pull_inside_begin_next() {
    let pull = Puller::new(futures::stream::iter([1_u32, 2]));
    let (tx, rx) = mpsc::channel();
    let handle = pull.begin_next(
        move |h: AsyncResult<Option<u32>>| {
            tx.send((
                h.completed_synchronously(),
                h.state().downcast_ref::<&str>().copied(),
            ))
            .unwrap()
        },
        State::new("mine"),
    );
    // The callback ran inside `begin_next`.
    assert_eq!(rx.try_recv(), Ok((true, Some("mine"))));
    assert_eq!(pull.end_next(handle), Ok(Some(1)));
}

#[test]
fn a_pull_waits_for_its_item_and_calls_back_with_it() {
    let (pull, emitters) = puller();
    let (tx, rx) = mpsc::channel();
    let handle = pull.begin_next(
        move |h: AsyncResult<Item>| tx.send(h.end()).unwrap(),
        State::none(),
    );
    assert!(!handle.completed_synchronously());
    assert!(!handle.is_completed());
    let emitter = emitters.recv().unwrap();
    let _ = emitter.emit(9);
    assert_eq!(rx.recv().unwrap(), Ok(Some(Ok(9))));
    assert!(!handle.completed_synchronously());
    assert_eq!(handle.end(), Err(Error::AlreadyEnded));
}

#[test]
fn pulls_are_served_in_the_order_they_were_begun() {
    let (pull, emitters) = puller();
    let handles: Vec<_> = (0..3)
        .map(|_| pull.begin_next(AsyncCallback::none(), State::none()))
        .collect();
    let emitter = emitters.recv().unwrap();
    for i in 0..3 {
        let _ = emitter.emit(i);
    }
    let items: Vec<Item> = handles.into_iter().map(|h| h.end().unwrap()).collect();
    assert_eq!(items, [Some(Ok(0)), Some(Ok(1)), Some(Ok(2))]);
}

#[test]
fn a_cancelled_pull_loses_no_item() {
    let (pull, emitters) = puller();
    let cancelled = pull.begin_next(AsyncCallback::none(), State::none());
    let emitter = emitters.recv().unwrap();
    cancelled.cancel();
    assert_eq!(cancelled.end(), Err(Error::Cancelled));
    let _ = emitter.emit(5);
    let next = pull.begin_next(AsyncCallback::none(), State::none());
    assert_eq!(pull.end_next(next), Ok(Some(Ok(5))));
}

#[test]
fn after_the_end_every_pull_returns_none() {
    let (pull, emitters) = puller();
    let first = pull.begin_next(AsyncCallback::none(), State::none());
    let emitter = emitters.recv().unwrap();
    let _ = emitter.emit(1);
    emitter.finish();
    assert_eq!(first.end(), Ok(Some(Ok(1))));
    for _ in 0..3 {
        let handle = pull.begin_next(AsyncCallback::none(), State::none());
        assert!(handle.completed_synchronously());
        assert_eq!(handle.end(), Ok(None));
    }
}

#[test]
fn a_panicking_stream_fails_its_pull_and_later_pulls_see_the_end() {
    let stream = futures::stream::iter([1_u32, 2, 3]).map(|i| {
        if i == 2 {
            panic!("stream failed on {i}");
        }
        i
    });
    let pull = Puller::new(stream);
    assert_eq!(
        pull.begin_next(AsyncCallback::none(), State::none()).end(),
        Ok(Some(1))
    );
    let failed = common::panic_message(pull.begin_next(AsyncCallback::none(), State::none()).end());
    assert_eq!(failed, Ok(Some("stream failed on 2".to_owned())));
    assert_eq!(
        pull.begin_next(AsyncCallback::none(), State::none()).end(),
        Ok(None)
    );
}

#[test]
fn pulls_from_eight_threads_get_each_item_exactly_once() {
    let per_thread = if cfg!(miri) { 5 } else { 500 };
    let pull = Puller::new(futures::stream::iter(0..8 * per_thread));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (pull, seen) = (pull.clone(), Arc::clone(&seen));
            thread::spawn(move || {
                for _ in 0..per_thread {
                    let item = pull.begin_next(AsyncCallback::none(), State::none()).end();
                    seen.lock().unwrap().push(item.unwrap().unwrap());
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..8 * per_thread).collect::<Vec<_>>());
}

/// A legacy loop: each pull's callback begins the next one.
fn pull_step(pull: Puller<futures::stream::Iter<std::ops::Range<u64>>>, done: mpsc::Sender<u64>) {
    let next = pull.clone();
    drop(pull.begin_next(
        move |h: AsyncResult<Option<u64>>| match h.end().unwrap() {
            Some(_) => pull_step(next, done),
            None => done.send(0).unwrap(),
        },
        State::none(),
    ));
}

#[test]
fn a_begin_next_loop_over_a_million_buffered_items_on_a_small_stack() {
    let n = if cfg!(miri) { 100 } else { 1_000_000 };
    let finished = thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(move || {
            let (done, finished) = mpsc::channel();
            pull_step(Puller::new(futures::stream::iter(0..n)), done);
            finished.try_recv().is_ok()
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(finished, "every pull completed inside the first begin_next");
}

#[test]
fn a_cancelled_waiting_pull_keeps_the_order_and_sees_no_false_end() {
    // The review's case: b, waiting behind a, is cancelled; c must wait its turn
    // behind a, not find the stream "gone".
    let (pull, emitters) = puller();
    let a = pull.begin_next(AsyncCallback::none(), State::none());
    let emitter = emitters.recv().unwrap();
    let b = pull.begin_next(AsyncCallback::none(), State::none());
    let c = pull.begin_next(AsyncCallback::none(), State::none());
    b.cancel();
    // Only proving that c does not end early.
    assert_eq!(c.wait_timeout(Duration::from_millis(50)), Ok(false));
    let _ = emitter.emit(1);
    let _ = emitter.emit(2);
    assert_eq!(a.end(), Ok(Some(Ok(1))));
    assert_eq!(b.end(), Err(Error::Cancelled));
    assert_eq!(c.end(), Ok(Some(Ok(2))));
}

#[test]
fn a_pull_cancelled_while_its_item_is_read_hands_the_item_to_the_next() {
    type Handle = AsyncResult<Option<u32>>;
    let slot: Arc<Mutex<Option<Handle>>> = Arc::new(Mutex::new(None));
    let waker_slot: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
    let stream = {
        let (slot, waker_slot) = (slot.clone(), waker_slot.clone());
        let mut next = 1_u32;
        futures::stream::poll_fn(move |cx| {
            // The legacy side cancels the pull (a timeout, say) just as the item comes.
            let Some(handle) = slot.lock().unwrap().take() else {
                *waker_slot.lock().unwrap() = Some(cx.waker().clone());
                return Poll::Pending;
            };
            handle.cancel();
            let item = next;
            next += 1;
            Poll::Ready(Some(item))
        })
    };
    let pull = Puller::new(stream);
    let first = pull.begin_next(AsyncCallback::none(), State::none());
    *slot.lock().unwrap() = Some(first.clone());
    // Wake the pull (the inline poll stored a no-op waker; the spawned pull its own).
    while !first.is_completed() {
        if let Some(waker) = waker_slot.lock().unwrap().take() {
            waker.wake();
        }
        thread::yield_now();
    }
    assert_eq!(first.end(), Err(Error::Cancelled));
    let second = pull.begin_next(AsyncCallback::none(), State::none());
    assert_eq!(
        second.end(),
        Ok(Some(1)),
        "the cancelled pull's item goes to the next"
    );
}

/// A stream that is pending once (waking itself at once), then counts.
struct YieldFirst(bool, u32);

impl futures::Stream for YieldFirst {
    type Item = u32;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
        if !self.0 {
            self.0 = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.1 += 1;
        Poll::Ready(Some(self.1))
    }
}

#[test]
fn a_callback_runs_inside_begin_next_only_for_a_synchronous_completion() {
    for _ in 0..if cfg!(miri) { 2 } else { 100 } {
        // The review's case: the stream is pending once, then ready at once.
        let pull = Puller::new(YieldFirst(false, 0));
        let (tx, rx) = mpsc::channel();
        let handle = pull.begin_next(
            move |h: AsyncResult<Option<u32>>| {
                tx.send((thread::current().id(), h.completed_synchronously()))
                    .unwrap()
            },
            State::none(),
        );
        let (ran_on, synchronous) = rx.recv().unwrap();
        assert_eq!(synchronous, handle.completed_synchronously());
        // Rule 9: on this thread (inside `begin_next`) only when synchronous.
        assert_eq!(ran_on == thread::current().id(), synchronous);
        assert_eq!(handle.end(), Ok(Some(1)));
    }
}

#[test]
fn a_pull_callback_may_begin_the_next_pull_and_wait_for_it() {
    let (pull, emitters) = puller();
    let again = pull.clone();
    let (tx, rx) = mpsc::channel();
    let _first = pull.begin_next(
        move |h: AsyncResult<Item>| {
            let first = h.end();
            let next = again.begin_next(AsyncCallback::none(), State::none());
            tx.send((first, next.end())).unwrap();
        },
        State::none(),
    );
    let emitter = emitters.recv().unwrap();
    let _ = emitter.emit(1);
    let _ = emitter.emit(2);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok((Ok(Some(Ok(1))), Ok(Some(Ok(2))))),
        "the next pull was served while the callback waited"
    );
}

/// A stream whose drop panics.
struct PanicsOnDrop;

impl futures::Stream for PanicsOnDrop {
    type Item = u8;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<u8>> {
        Poll::Ready(None)
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("stream drop failed");
    }
}

#[test]
fn a_panicking_stream_drop_never_unwinds_out_of_the_pullers_drop() {
    let pull = Puller::new(PanicsOnDrop);
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(pull))).is_ok());
}
