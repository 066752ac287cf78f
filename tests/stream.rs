//! Callback streams (`apm_tap::stream::from_events`): laziness, the unregister that runs
//! exactly once, each buffer policy's survivors and emit outcomes, backpressure, the
//! end of the stream, and no user code under the lock (rules 20-24).

// A waker whose `clone` runs user code can only be built from a raw vtable.
#![allow(unsafe_code)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Wake, Waker};
use std::thread;

use apm_tap::stream::{from_events, Buffer, Emit, Emitter, EventStream, Overflow};
use apm_tap::{Abandonment, Error};
use common::{CountingWaker, DropCounter};
use futures::executor::block_on;
use futures::stream::{FusedStream, StreamExt};

/// Counts register and unregister calls.
#[derive(Default)]
struct Calls {
    registers: AtomicUsize,
    unregisters: AtomicUsize,
}

impl Calls {
    fn registers(&self) -> usize {
        self.registers.load(SeqCst)
    }
    fn unregisters(&self) -> usize {
        self.unregisters.load(SeqCst)
    }
}

/// A stream whose register closure sends its emitter out, counted by `calls`.
fn source<T: Send + 'static>(
    buffer: Buffer,
) -> (EventStream<T>, mpsc::Receiver<Emitter<T>>, Arc<Calls>) {
    let calls = Arc::new(Calls::default());
    let (give, take) = mpsc::channel();
    let counted = Arc::clone(&calls);
    let stream = from_events(buffer, move |emitter: Emitter<T>| {
        counted.registers.fetch_add(1, SeqCst);
        give.send(emitter).unwrap();
        Ok::<_, Error>(move || {
            counted.unregisters.fetch_add(1, SeqCst);
        })
    });
    (stream, take, calls)
}

fn poll<T>(stream: &mut EventStream<T>, waker: &Waker) -> Poll<Option<Result<T, Error>>> {
    stream.poll_next_unpin(&mut Context::from_waker(waker))
}

/// Polls once (registering), then returns the emitter.
fn registered<T: Send + 'static>(buffer: Buffer) -> (EventStream<T>, Emitter<T>, Arc<Calls>) {
    let (mut stream, emitters, calls) = source(buffer);
    assert!(poll(&mut stream, Waker::noop()).is_pending());
    let emitter = emitters.try_recv().unwrap();
    (stream, emitter, calls)
}

/// Everything the stream yields until it ends.
fn drain<T>(stream: &mut EventStream<T>) -> Vec<Result<T, Error>> {
    let mut items = Vec::new();
    while let Poll::Ready(Some(item)) = poll(stream, Waker::noop()) {
        items.push(item);
    }
    items
}

/// Emits 0..100 into `buffer` with no reader; returns the outcomes and what the stream
/// yields after `finish`.
fn hundred_into(buffer: Buffer) -> (Vec<Emit<u32>>, Vec<Result<u32, Error>>) {
    let (mut stream, emitter, _) = registered(buffer);
    let outcomes = (0..100).map(|i| emitter.emit(i)).collect();
    emitter.finish();
    (outcomes, drain(&mut stream))
}

#[test]
fn drop_oldest_keeps_the_newest_and_hands_back_each_evicted_item() {
    let (outcomes, items) = hundred_into(Buffer::bounded(3, Overflow::DropOldest));
    assert_eq!(items, [Ok(97), Ok(98), Ok(99)]);
    assert_eq!(outcomes[..3], [Emit::Queued, Emit::Queued, Emit::Queued]);
    for (i, outcome) in outcomes.iter().enumerate().skip(3) {
        assert_eq!(*outcome, Emit::Evicted(i as u32 - 3));
    }
}

#[test]
fn drop_newest_keeps_the_oldest_and_hands_back_each_refused_item() {
    let (outcomes, items) = hundred_into(Buffer::bounded(3, Overflow::DropNewest));
    assert_eq!(items, [Ok(0), Ok(1), Ok(2)]);
    for (i, outcome) in outcomes.iter().enumerate().skip(3) {
        assert_eq!(*outcome, Emit::Rejected(i as u32));
    }
}

#[test]
fn latest_keeps_only_the_newest_item() {
    let (outcomes, items) = hundred_into(Buffer::latest());
    assert_eq!(items, [Ok(99)]);
    assert_eq!(outcomes[0], Emit::Queued);
    for (i, outcome) in outcomes.iter().enumerate().skip(1) {
        assert_eq!(*outcome, Emit::Evicted(i as u32 - 1));
    }
}

#[test]
fn suspend_refuses_with_full_until_the_consumer_reads() {
    let (outcomes, items) = hundred_into(Buffer::bounded(3, Overflow::Suspend));
    assert_eq!(items, [Ok(0), Ok(1), Ok(2)]);
    for (i, outcome) in outcomes.iter().enumerate().skip(3) {
        assert_eq!(*outcome, Emit::Full(i as u32));
    }
}

#[test]
fn fail_rejects_the_overflowing_item_and_ends_the_stream_after_the_buffer() {
    let (outcomes, items) = hundred_into(Buffer::bounded(3, Overflow::Fail));
    assert_eq!(items, [Ok(0), Ok(1), Ok(2), Err(Error::Overflow)]);
    assert_eq!(outcomes[3], Emit::Rejected(3));
    for (i, outcome) in outcomes.iter().enumerate().skip(4) {
        assert_eq!(*outcome, Emit::Closed(i as u32));
    }
}

#[test]
fn unbounded_keeps_everything() {
    let (outcomes, items) = hundred_into(Buffer::unbounded());
    assert!(outcomes.iter().all(|outcome| *outcome == Emit::Queued));
    assert_eq!(items, (0..100).map(Ok).collect::<Vec<_>>());
}

#[test]
fn a_zero_capacity_is_rejected_at_construction() {
    let panic = std::panic::catch_unwind(|| Buffer::bounded(0, Overflow::DropOldest)).unwrap_err();
    assert_eq!(
        panic.downcast_ref::<&str>(),
        Some(&"a bounded stream buffer needs a capacity of at least 1")
    );
}

#[test]
fn nothing_registers_before_the_first_poll_and_registration_runs_once() {
    let (mut stream, emitters, calls) = source::<u32>(Buffer::unbounded());
    assert_eq!(calls.registers(), 0);
    for _ in 0..3 {
        assert!(poll(&mut stream, Waker::noop()).is_pending());
    }
    assert_eq!(calls.registers(), 1);
    assert_eq!(emitters.try_iter().count(), 1);
    drop(stream);
    assert_eq!(calls.unregisters(), 1);
}

#[test]
fn a_stream_dropped_before_its_first_poll_never_registers() {
    let (stream, _emitters, calls) = source::<u32>(Buffer::unbounded());
    drop(stream);
    assert_eq!((calls.registers(), calls.unregisters()), (0, 0));
}

#[test]
fn drop_before_the_first_item_unregisters_once_and_closes() {
    let (stream, emitter, calls) = registered::<u32>(Buffer::unbounded());
    drop(stream);
    assert_eq!(calls.unregisters(), 1);
    assert!(emitter.is_closed());
    assert_eq!(emitter.emit(1), Emit::Closed(1));
    assert!(!emitter.finish());
    assert_eq!(calls.unregisters(), 1);
}

#[test]
fn drop_after_the_first_item_unregisters_once_and_drops_the_buffer_once() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (mut stream, emitter, calls) = registered(Buffer::unbounded());
    for _ in 0..3 {
        assert!(matches!(
            emitter.emit(DropCounter(Arc::clone(&dropped))),
            Emit::Queued
        ));
    }
    let Poll::Ready(Some(Ok(first))) = poll(&mut stream, Waker::noop()) else {
        panic!("an item was buffered");
    };
    drop(first);
    assert_eq!(dropped.load(SeqCst), 1);
    drop(stream);
    assert_eq!(dropped.load(SeqCst), 3);
    assert_eq!(calls.unregisters(), 1);
    // A refused item is handed back, not dropped by the stream.
    let Emit::Closed(late) = emitter.emit(DropCounter(Arc::clone(&dropped))) else {
        panic!("the stream is closed");
    };
    assert_eq!(dropped.load(SeqCst), 3);
    drop(late);
    assert_eq!(dropped.load(SeqCst), 4);
}

#[test]
fn drop_during_the_first_item_unregisters_once_and_loses_nothing() {
    for _ in 0..if cfg!(miri) { 4 } else { 200 } {
        let dropped = Arc::new(AtomicUsize::new(0));
        let (stream, emitter, calls) = registered(Buffer::unbounded());
        let start = Arc::new(Barrier::new(2));
        let producer = {
            let (start, dropped) = (Arc::clone(&start), Arc::clone(&dropped));
            thread::spawn(move || {
                start.wait();
                emitter.emit(DropCounter(dropped))
            })
        };
        start.wait();
        drop(stream);
        let outcome = producer.join().unwrap();
        match outcome {
            // Queued before the drop: the stream's drop dropped it.
            Emit::Queued => assert_eq!(dropped.load(SeqCst), 1),
            // Refused after the drop: handed back, and dropped here.
            Emit::Closed(item) => {
                assert_eq!(dropped.load(SeqCst), 0);
                drop(item);
                assert_eq!(dropped.load(SeqCst), 1);
            }
            other => panic!("unexpected {:?}", other.is_queued()),
        }
        assert_eq!(calls.unregisters(), 1);
    }
}

#[test]
fn finish_ends_after_the_buffer_and_unregisters_in_the_poll_that_ends() {
    let (mut stream, emitter, calls) = registered(Buffer::unbounded());
    assert_eq!(emitter.emit(1), Emit::Queued);
    assert!(emitter.finish());
    assert_eq!(emitter.emit(2), Emit::Closed(2));
    assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(Some(Ok(1))));
    assert_eq!(calls.unregisters(), 0);
    assert!(!stream.is_terminated());
    assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(None));
    assert_eq!(calls.unregisters(), 1);
    assert!(stream.is_terminated());
    assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(None));
    drop(stream);
    assert_eq!(calls.unregisters(), 1);
}

#[test]
fn fail_yields_the_error_once_after_the_buffer() {
    let (mut stream, emitter, calls) = registered(Buffer::unbounded());
    assert_eq!(emitter.emit(1), Emit::Queued);
    assert_eq!(emitter.fail(Error::Cancelled), Ok(()));
    assert_eq!(emitter.fail(Error::AlreadyEnded), Err(Error::AlreadyEnded));
    assert!(!emitter.finish());
    assert_eq!(drain(&mut stream), [Ok(1), Err(Error::Cancelled)]);
    assert_eq!(calls.unregisters(), 1);
}

#[test]
fn dropping_every_emitter_abandons_the_stream_after_the_buffer() {
    let (mut stream, emitter, calls) = registered(Buffer::unbounded());
    let clone = emitter.clone();
    assert_eq!(emitter.emit(1), Emit::Queued);
    drop(emitter);
    assert!(poll(&mut stream, Waker::noop()).is_ready()); // the item
    assert!(poll(&mut stream, Waker::noop()).is_pending()); // a clone lives on
    drop(clone);
    assert_eq!(
        drain(&mut stream),
        [Err(Error::Abandoned(Abandonment::EmittersDropped))]
    );
    assert_eq!(calls.unregisters(), 1);
}

#[test]
fn a_failed_registration_yields_its_error_and_has_nothing_to_undo() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&dropped);
    let mut stream = from_events(Buffer::unbounded(), move |emitter| {
        // An item emitted by a registration that then fails is dropped with it.
        assert!(matches!(emitter.emit(DropCounter(counter)), Emit::Queued));
        Err::<fn(), _>(std::io::Error::other("no such device"))
    });
    let cx = &mut Context::from_waker(Waker::noop());
    let Poll::Ready(Some(Err(error))) = stream.poll_next_unpin(cx) else {
        panic!("the registration failed");
    };
    assert_eq!(error.to_string(), "no such device");
    assert_eq!(dropped.load(SeqCst), 1);
    assert!(matches!(stream.poll_next_unpin(cx), Poll::Ready(None)));
}

#[test]
fn a_panicking_registration_propagates_out_of_poll_and_ends_the_stream() {
    let mut stream = from_events(Buffer::unbounded(), |_emitter: Emitter<u32>| {
        if true {
            panic!("register failed");
        }
        Ok::<_, Error>(|| {})
    });
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll(&mut stream, Waker::noop())
    }))
    .unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"register failed"));
    assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(None));
}

#[test]
fn a_panicking_unregister_propagates_out_of_the_ending_poll_and_is_discarded_in_drop() {
    fn panicking() -> (EventStream<u32>, Emitter<u32>) {
        let (give, take) = mpsc::channel();
        let mut stream = from_events(Buffer::unbounded(), move |emitter| {
            give.send(emitter).unwrap();
            Ok::<_, Error>(|| panic!("unregister failed"))
        });
        assert!(poll(&mut stream, Waker::noop()).is_pending());
        let emitter = take.recv().unwrap();
        (stream, emitter)
    }
    let (mut stream, emitter) = panicking();
    emitter.finish();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll(&mut stream, Waker::noop())
    }))
    .unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"unregister failed"));
    assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(None));

    let (stream, emitter) = panicking();
    drop(stream); // does not unwind
    assert!(emitter.is_closed());
}

#[test]
fn the_consumer_is_woken_once_and_an_equal_waker_is_not_cloned_again() {
    let (counter, waker) = CountingWaker::new();
    let (mut stream, emitter, _) = registered::<u32>(Buffer::unbounded());
    assert!(poll(&mut stream, &waker).is_pending());
    assert!(poll(&mut stream, &waker).is_pending());
    assert_eq!(counter.clones_held(), 1);
    for i in 0..3 {
        assert_eq!(emitter.emit(i), Emit::Queued);
    }
    assert_eq!(counter.wakes(), 1);
    assert_eq!(counter.clones_held(), 0);
    assert_eq!(drain(&mut stream), [Ok(0), Ok(1), Ok(2)]);
    assert!(emitter.finish());
    assert_eq!(counter.wakes(), 1);
}

#[test]
fn the_end_wakes_the_consumer() {
    let (counter, waker) = CountingWaker::new();
    let (mut stream, emitter, _) = registered::<u32>(Buffer::unbounded());
    assert!(poll(&mut stream, &waker).is_pending());
    drop(emitter);
    assert_eq!(counter.wakes(), 1);
}

/// A waker that panics when woken.
struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("hostile waker");
    }
}

#[test]
fn a_panicking_waker_never_reaches_the_producer() {
    let waker = Waker::from(Arc::new(PanickingWaker));
    let (mut stream, emitter, _) = registered::<u32>(Buffer::unbounded());
    assert!(poll(&mut stream, &waker).is_pending());
    let outcome = thread::spawn(move || emitter.emit(5)).join().unwrap();
    assert_eq!(outcome, Emit::Queued);
    assert_eq!(poll(&mut stream, &waker), Poll::Ready(Some(Ok(5))));
}

/// A waker whose clone emits into the stream it is polled by (it would deadlock if the
/// clone ran under the stream's lock: rule 18), or panics when it has no emitter.
struct EmittingWaker(Mutex<Option<Emitter<u32>>>, AtomicBool);

fn emitting_waker(emitter: Option<Emitter<u32>>) -> Waker {
    emitting_waker_panicking_on_drop(emitter, false)
}

/// [`emitting_waker`], whose first dropped clone panics if `panic_on_drop`.
fn emitting_waker_panicking_on_drop(emitter: Option<Emitter<u32>>, panic_on_drop: bool) -> Waker {
    // A hand-made vtable, so that `clone` runs user code.
    unsafe fn clone(data: *const ()) -> RawWaker {
        // SAFETY: `data` is the `Arc<EmittingWaker>` made in `emitting_waker`.
        let waker = unsafe { &*(data as *const EmittingWaker) };
        match waker.0.lock().unwrap().as_ref() {
            Some(emitter) => assert_eq!(emitter.emit(7), Emit::Queued),
            None => panic!("waker clone exploded"),
        }
        // SAFETY: as above; the new waker owns one more count.
        unsafe { Arc::increment_strong_count(data as *const EmittingWaker) };
        RawWaker::new(data, &VTABLE)
    }
    unsafe fn drop_waker(data: *const ()) {
        // SAFETY: `data` is alive: this waker owns one count of the `Arc`.
        let panics = unsafe { &*(data as *const EmittingWaker) }
            .1
            .swap(false, SeqCst);
        // SAFETY: each waker owns one count of the `Arc`.
        unsafe { Arc::decrement_strong_count(data as *const EmittingWaker) };
        if panics {
            panic!("waker drop exploded");
        }
    }
    unsafe fn wake(data: *const ()) {
        // SAFETY: as in `drop_waker`.
        unsafe { drop_waker(data) };
    }
    unsafe fn wake_by_ref(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop_waker);
    let data = Arc::into_raw(Arc::new(EmittingWaker(
        Mutex::new(emitter),
        AtomicBool::new(panic_on_drop),
    )));
    // SAFETY: the vtable's functions keep the `Arc` counts balanced.
    unsafe { Waker::from_raw(RawWaker::new(data.cast(), &VTABLE)) }
}

#[test]
fn a_waker_clone_may_emit_into_its_own_stream() {
    let (mut stream, emitter, _) = registered::<u32>(Buffer::unbounded());
    let waker = emitting_waker(Some(emitter));
    // The clone queued 7 while the poll had released the lock: the poll yields it.
    assert_eq!(poll(&mut stream, &waker), Poll::Ready(Some(Ok(7))));
}

#[test]
fn a_panicking_waker_clone_propagates_out_of_poll_and_leaves_the_stream_usable() {
    let (mut stream, emitter, _) = registered::<u32>(Buffer::unbounded());
    let waker = emitting_waker(None);
    let panic =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| poll(&mut stream, &waker)))
            .unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"waker clone exploded"));
    let (counter, good) = CountingWaker::new();
    assert!(poll(&mut stream, &good).is_pending());
    assert_eq!(emitter.emit(1), Emit::Queued);
    assert_eq!(counter.wakes(), 1);
    assert_eq!(poll(&mut stream, &good), Poll::Ready(Some(Ok(1))));
}

#[test]
fn when_ready_runs_at_once_when_there_is_room() {
    let (_stream, emitter, _) = registered::<u32>(Buffer::bounded(1, Overflow::Suspend));
    let here = thread::current().id();
    let (ran, ran_on) = mpsc::channel();
    emitter.when_ready(move || ran.send(thread::current().id()).unwrap());
    assert_eq!(ran_on.try_recv(), Ok(here));
}

#[test]
fn when_ready_runs_on_the_consumer_that_makes_room() {
    let (mut stream, emitter, _) = registered::<u32>(Buffer::bounded(1, Overflow::Suspend));
    assert_eq!(emitter.emit(1), Emit::Queued);
    assert_eq!(emitter.emit(2), Emit::Full(2));
    let (ran, ran_on) = mpsc::channel();
    emitter.when_ready(move || ran.send(thread::current().id()).unwrap());
    assert!(ran_on.try_recv().is_err());
    let consumer = thread::spawn(move || {
        assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(Some(Ok(1))));
        (thread::current().id(), stream)
    });
    let (consumer_thread, _stream) = consumer.join().unwrap();
    assert_eq!(ran_on.try_recv(), Ok(consumer_thread));
    assert!(ran_on.try_recv().is_err(), "ran once");
    assert_eq!(emitter.emit(2), Emit::Queued);
}

#[test]
fn a_paused_producer_is_told_once_the_buffer_is_half_empty() {
    let (mut stream, emitter, _) = registered::<u32>(Buffer::bounded(4, Overflow::Suspend));
    for i in 0..4 {
        assert_eq!(emitter.emit(i), Emit::Queued);
    }
    assert_eq!(emitter.emit(4), Emit::Full(4));
    let told = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&told);
    emitter.when_ready(move || {
        counter.fetch_add(1, SeqCst);
    });
    assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(Some(Ok(0))));
    assert_eq!(told.load(SeqCst), 0, "3 of 4 left: not yet");
    assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(Some(Ok(1))));
    assert_eq!(told.load(SeqCst), 1, "2 of 4 left: told");
    assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(Some(Ok(2))));
    assert_eq!(told.load(SeqCst), 1, "told once");
}

#[test]
fn when_ready_runs_when_the_stream_closes_and_its_panic_is_discarded() {
    let (stream, emitter, _) = registered::<u32>(Buffer::bounded(1, Overflow::Suspend));
    assert_eq!(emitter.emit(1), Emit::Queued);
    let (ran, ran_on) = mpsc::channel();
    emitter.when_ready(move || ran.send(()).unwrap());
    emitter.when_ready(|| panic!("hostile producer"));
    drop(stream); // does not unwind
    assert_eq!(ran_on.try_recv(), Ok(()));
    assert_eq!(emitter.emit(2), Emit::Closed(2));
}

#[test]
fn emit_blocking_waits_for_room_and_keeps_the_order() {
    let (stream, emitter, _) = registered::<u32>(Buffer::bounded(2, Overflow::Suspend));
    let n = if cfg!(miri) { 100 } else { 10_000 };
    let producer = thread::spawn(move || {
        for i in 0..n {
            assert_eq!(emitter.emit_blocking(i), Emit::Queued);
        }
        emitter.finish();
    });
    let items: Vec<u32> = block_on(stream.map(Result::unwrap).collect());
    producer.join().unwrap();
    assert_eq!(items, (0..n).collect::<Vec<_>>());
}

#[test]
fn emit_blocking_is_released_by_the_drop_of_the_stream() {
    let (stream, emitter, _) = registered::<u32>(Buffer::bounded(1, Overflow::Suspend));
    assert_eq!(emitter.emit(1), Emit::Queued);
    let (started, blocked) = mpsc::channel();
    let producer = thread::spawn(move || {
        started.send(()).unwrap();
        emitter.emit_blocking(2)
    });
    blocked.recv().unwrap();
    drop(stream);
    assert_eq!(producer.join().unwrap(), Emit::Closed(2));
}

#[test]
fn emit_blocking_refuses_on_the_thread_that_drives_the_consumers_runtime() {
    let runtime = common::current_thread();
    let outcome = runtime.block_on(async {
        let (give, take) = mpsc::channel();
        let mut stream = from_events(Buffer::bounded(1, Overflow::Suspend), move |emitter| {
            give.send(emitter).unwrap();
            Ok::<_, Error>(|| {})
        });
        assert!(futures::poll!(stream.next()).is_pending());
        let emitter: Emitter<u32> = take.recv().unwrap();
        assert_eq!(emitter.emit(1), Emit::Queued);
        emitter.emit_blocking(2)
    });
    assert_eq!(outcome, Emit::WouldDeadlock(2));
}

#[test]
fn a_multi_thread_consumer_reads_a_blocking_producer_from_a_worker() {
    let runtime = common::multi_thread(2, "stream-worker");
    let sum = runtime.block_on(async {
        let stream = from_events(Buffer::bounded(4, Overflow::Suspend), |emitter| {
            let producer = tokio::spawn(async move {
                for i in 0..100_u64 {
                    assert_eq!(emitter.emit_blocking(i), Emit::Queued);
                }
                emitter.finish();
            });
            Ok::<_, Error>(move || drop(producer))
        });
        stream
            .map(Result::unwrap)
            .fold(0, |a, b| async move { a + b })
            .await
    });
    assert_eq!(sum, 4_950);
}

#[test]
fn the_stream_and_emitter_are_send_and_sync_where_they_should_be() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<EventStream<String>>();
    send::<Emitter<String>>();
    sync::<Emitter<String>>();
}

#[test]
fn a_callback_stream_composes_with_timeouts_and_select() {
    let runtime = common::current_thread();
    runtime.block_on(async {
        let (mut quiet, _emitter, _) = registered::<u32>(Buffer::latest());
        let timed_out =
            tokio::time::timeout(std::time::Duration::from_millis(5), quiet.next()).await;
        assert!(timed_out.is_err());
        let (mut busy, emitter, _) = registered::<u32>(Buffer::latest());
        assert_eq!(emitter.emit(3), Emit::Queued);
        let got = tokio::select! {
            item = quiet.next() => item,
            item = busy.next() => item,
        };
        assert_eq!(got, Some(Ok(3)));
    });
}

#[test]
fn a_panicking_waker_drop_loses_no_item_the_poll_took() {
    // The review's case: the clone emits (another thread could, between the poll's two
    // looks), the poll takes that item, then the clone it no longer needs is dropped,
    // and that drop panics: the item must still come.
    let (mut stream, emitter, _) = registered::<u32>(Buffer::unbounded());
    let _keep = emitter.clone();
    // The first clone dropped panics: the one the poll made, not this one.
    let waker = emitting_waker_panicking_on_drop(Some(emitter), true);
    // The poll returns the item; the drop's panic was discarded.
    assert_eq!(poll(&mut stream, &waker), Poll::Ready(Some(Ok(7))));
}

#[test]
fn drop_newest_and_fail_accept_items_while_there_is_room() {
    for overflow in [Overflow::DropNewest, Overflow::Fail] {
        let (mut stream, emitter, _) = registered::<u32>(Buffer::bounded(8, overflow));
        for i in 0..8 {
            assert_eq!(emitter.emit(i), Emit::Queued);
        }
        assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(Some(Ok(0))));
        assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(Some(Ok(1))));
        // Six held: two more fit, the third does not.
        assert_eq!(emitter.emit(8), Emit::Queued);
        assert_eq!(emitter.emit(9), Emit::Queued);
        assert_eq!(emitter.emit(10), Emit::Rejected(10));
    }
}

/// A stream whose register closure emits into a full `Suspend` buffer with
/// `emit_blocking`, inside the consumer's own poll.
fn blocking_inside_register() -> EventStream<u32> {
    from_events(
        Buffer::bounded(1, Overflow::Suspend),
        |emitter: Emitter<u32>| {
            assert_eq!(emitter.emit_blocking(1), Emit::Queued);
            // Nobody could make room: this poll is the consumer.
            assert_eq!(emitter.emit_blocking(2), Emit::WouldDeadlock(2));
            emitter.finish();
            Ok::<_, Error>(|| {})
        },
    )
}

#[test]
fn emit_blocking_inside_the_consumers_poll_refuses_on_any_executor() {
    let items: Vec<_> = block_on(blocking_inside_register().collect());
    assert_eq!(items, [Ok(1)]);
    let runtime = common::multi_thread(1, "stream-inside");
    let items = runtime.block_on(async {
        tokio::spawn(async { blocking_inside_register().collect::<Vec<_>>().await })
            .await
            .unwrap()
    });
    assert_eq!(items, [Ok(1)]);
}

#[test]
fn a_panicking_unregister_loses_not_the_producers_error() {
    let (give, take) = mpsc::channel();
    let mut stream = from_events(Buffer::unbounded(), move |emitter| {
        give.send(emitter).unwrap();
        Ok::<_, Error>(|| panic!("unregister failed"))
    });
    assert!(poll(&mut stream, Waker::noop()).is_pending());
    let emitter: Emitter<u32> = take.recv().unwrap();
    emitter.fail(Error::Cancelled).unwrap();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll(&mut stream, Waker::noop())
    }))
    .unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"unregister failed"));
    assert_eq!(
        poll(&mut stream, Waker::noop()),
        Poll::Ready(Some(Err(Error::Cancelled)))
    );
    assert_eq!(poll(&mut stream, Waker::noop()), Poll::Ready(None));
}
