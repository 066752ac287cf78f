//! `stream::subscribe`: a stream pushed to callbacks with demand, tested against the
//! Reactive Streams rules that apply (1.1, 1.3, 1.7, 2.13, 3.3, 3.5, 3.9, 3.17).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;

use apm_tap::stream::{from_events, subscribe, subscribe_on, Buffer, Demand, Subscriber};
use apm_tap::Error;
use common::DropCounter;
use futures::StreamExt;

/// What a subscriber was told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signal {
    Next(u64),
    Error(Error),
    Complete,
}

/// Records every signal; optionally requests more from inside `on_next`, or panics on
/// an item. Checks that no two signals overlap.
struct Recorder {
    signals: Arc<Mutex<Vec<Signal>>>,
    inside: Arc<AtomicBool>,
    request_in_next: u64,
    panic_on: Option<u64>,
    told: Option<mpsc::Sender<()>>,
}

impl Recorder {
    fn new() -> (Recorder, Arc<Mutex<Vec<Signal>>>) {
        let signals = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder {
            signals: Arc::clone(&signals),
            inside: Arc::new(AtomicBool::new(false)),
            request_in_next: 0,
            panic_on: None,
            told: None,
        };
        (recorder, signals)
    }

    fn record(&self, signal: Signal) {
        assert!(!self.inside.swap(true, SeqCst), "two signals at once");
        self.signals.lock().unwrap().push(signal);
        if let Some(told) = &self.told {
            let _ = told.send(());
        }
        self.inside.store(false, SeqCst);
    }
}

impl Subscriber<u64, Error> for Recorder {
    fn on_next(&mut self, item: u64, demand: &Demand) {
        if self.panic_on == Some(item) {
            panic!("subscriber failed on {item}");
        }
        self.record(Signal::Next(item));
        if self.request_in_next > 0 {
            demand.request(self.request_in_next);
        }
    }
    fn on_error(&mut self, error: Error) {
        self.record(Signal::Error(error));
    }
    fn on_complete(&mut self) {
        self.record(Signal::Complete);
    }
}

fn items(n: u64) -> impl futures::Stream<Item = Result<u64, Error>> + Send + 'static {
    futures::stream::iter(0..n).map(Ok)
}

fn nexts(range: std::ops::Range<u64>) -> Vec<Signal> {
    range.map(Signal::Next).collect()
}

/// Waits until `signals` holds `n` signals (each one reported on `told`).
fn wait_for(told: &mpsc::Receiver<()>, n: usize) {
    for _ in 0..n {
        told.recv().unwrap();
    }
}

#[test]
fn rule_1_1_no_more_items_than_requested() {
    let (mut recorder, signals) = Recorder::new();
    let (tx, told) = mpsc::channel();
    recorder.told = Some(tx);
    let subscription = subscribe(items(10), recorder);
    assert!(
        signals.lock().unwrap().is_empty(),
        "nothing before a request"
    );
    subscription.request(3);
    wait_for(&told, 3);
    subscription.request(2);
    wait_for(&told, 2);
    // Nothing more comes without demand.
    assert!(told
        .recv_timeout(std::time::Duration::from_millis(20))
        .is_err());
    assert_eq!(*signals.lock().unwrap(), nexts(0..5));
    assert!(!subscription.is_completed());
    subscription.request(100);
    assert_eq!(subscription.end(), Ok(()));
    let mut expected = nexts(0..10);
    expected.push(Signal::Complete);
    assert_eq!(*signals.lock().unwrap(), expected);
}

/// Requests per requesting thread.
const PER_THREAD: u64 = if cfg!(miri) { 20 } else { 1_000 };

#[test]
fn rule_1_3_signals_are_serial_under_requests_from_eight_threads() {
    let (mut recorder, signals) = Recorder::new();
    let (tx, told) = mpsc::channel();
    recorder.told = Some(tx);
    let runtime = common::multi_thread(2, "subscribe-serial");
    let subscription = subscribe_on(&runtime, items(u64::MAX), recorder);
    let start = Arc::new(Barrier::new(8));
    let requesters: Vec<_> = (0..8)
        .map(|_| {
            let (demand, start) = (subscription.demand(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for _ in 0..PER_THREAD {
                    demand.request(1);
                }
            })
        })
        .collect();
    for requester in requesters {
        requester.join().unwrap();
    }
    wait_for(&told, 8 * PER_THREAD as usize);
    subscription.cancel();
    assert_eq!(subscription.end(), Err(Error::Cancelled));
    assert_eq!(*signals.lock().unwrap(), nexts(0..8 * PER_THREAD));
}

#[test]
fn rule_1_7_nothing_after_complete_or_error() {
    let (recorder, signals) = Recorder::new();
    let subscription = subscribe(items(2), recorder);
    let demand = subscription.demand();
    subscription.request(10);
    assert_eq!(subscription.end(), Ok(()));
    demand.request(10);
    demand.cancel();
    assert_eq!(
        *signals.lock().unwrap(),
        [Signal::Next(0), Signal::Next(1), Signal::Complete]
    );

    let (recorder, signals) = Recorder::new();
    let failing = futures::stream::iter([Ok(7), Err(Error::Overflow), Ok(8)]);
    let subscription = subscribe(failing, recorder);
    subscription.request(10);
    assert_eq!(subscription.end(), Ok(()));
    assert_eq!(
        *signals.lock().unwrap(),
        [Signal::Next(7), Signal::Error(Error::Overflow)]
    );
}

#[test]
fn rule_2_13_a_panicking_subscriber_cancels_and_is_reported_once() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (mut recorder, signals) = Recorder::new();
    recorder.panic_on = Some(2);
    let guard = DropCounter(Arc::clone(&dropped));
    let stream = items(10).map(move |item| {
        let _ = &guard; // the stream owns the counter: dropped with the stream
        item
    });
    let runtime = common::multi_thread(1, "subscribe-panic");
    let subscription = subscribe_on(&runtime, stream, recorder);
    subscription.request(10);
    match subscription.end() {
        Err(Error::Panicked(panic)) => assert_eq!(panic.message(), Some("subscriber failed on 2")),
        other => panic!("not a panic: {other:?}"),
    }
    assert_eq!(*signals.lock().unwrap(), nexts(0..2));
    assert_eq!(dropped.load(SeqCst), 1, "the stream was dropped");
    common::assert_still_serving(&runtime);
}

#[test]
fn rule_3_3_request_inside_next_does_not_recurse_on_a_small_stack() {
    let n: u64 = if cfg!(miri) { 1_000 } else { 1_000_000 };
    let depth = thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(move || {
            struct Deep {
                count: u64,
                lowest: usize,
                highest: usize,
            }
            impl Subscriber<u64, Error> for Deep {
                fn on_next(&mut self, item: u64, demand: &Demand) {
                    assert_eq!(item, self.count);
                    self.count += 1;
                    let here = &item as *const u64 as usize;
                    self.lowest = self.lowest.min(here);
                    self.highest = self.highest.max(here);
                    demand.request(1);
                }
                fn on_error(&mut self, error: Error) {
                    panic!("{error}");
                }
                fn on_complete(&mut self) {}
            }
            let (give, take) = mpsc::channel();
            struct Report(Deep, mpsc::Sender<(u64, usize)>);
            impl Subscriber<u64, Error> for Report {
                fn on_next(&mut self, item: u64, demand: &Demand) {
                    self.0.on_next(item, demand);
                }
                fn on_error(&mut self, error: Error) {
                    self.0.on_error(error);
                }
                fn on_complete(&mut self) {
                    let _ = self.1.send((self.0.count, self.0.highest - self.0.lowest));
                }
            }
            let runtime = common::current_thread();
            let deep = Deep {
                count: 0,
                lowest: usize::MAX,
                highest: 0,
            };
            let subscription = subscribe_on(&runtime, items(n), Report(deep, give));
            subscription.request(1);
            assert_eq!(runtime.block_on(subscription), Ok(()));
            let (count, spread) = take.recv().unwrap();
            assert_eq!(count, n);
            spread
        })
        .unwrap()
        .join()
        .unwrap();
    // Every `on_next` ran at the same depth (the task's poll loop), give or take the
    // poll that ran it inline.
    // (Miri gives each local an allocation of its own: addresses say nothing there.)
    if !cfg!(miri) {
        assert!(
            depth < 16 * 1024,
            "on_next ran {depth} bytes deeper than the first"
        );
    }
}

#[test]
fn rule_3_5_cancel_is_idempotent_and_thread_safe() {
    let (recorder, signals) = Recorder::new();
    let subscription = subscribe(futures::stream::pending::<Result<u64, Error>>(), recorder);
    subscription.request(1);
    let start = Arc::new(Barrier::new(8));
    let cancellers: Vec<_> = (0..8)
        .map(|_| {
            let (demand, start) = (subscription.demand(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                demand.cancel();
                demand.cancel();
            })
        })
        .collect();
    for canceller in cancellers {
        canceller.join().unwrap();
    }
    // The task waited on a stream with nothing: the cancel woke it.
    assert_eq!(subscription.end(), Err(Error::Cancelled));
    assert!(
        signals.lock().unwrap().is_empty(),
        "no signal after a cancel"
    );
}

#[test]
fn rule_3_9_a_request_of_zero_is_an_error() {
    let (recorder, signals) = Recorder::new();
    let subscription = subscribe(items(10), recorder);
    subscription.request(0);
    assert_eq!(subscription.end(), Err(Error::ZeroDemand));
    assert_eq!(*signals.lock().unwrap(), [Signal::Error(Error::ZeroDemand)]);
}

#[test]
fn rule_3_17_demand_saturates_at_u64_max() {
    let (recorder, signals) = Recorder::new();
    let subscription = subscribe(items(100), recorder);
    subscription.request(u64::MAX);
    subscription.request(u64::MAX);
    assert_eq!(subscription.end(), Ok(()));
    let signals = signals.lock().unwrap();
    assert_eq!(signals.len(), 101);
    assert_eq!(signals[100], Signal::Complete);
}

#[test]
fn a_callback_stream_subscribed_round_trips_its_items() {
    let (recorder, signals) = Recorder::new();
    let events = from_events(Buffer::unbounded(), |emitter| {
        for i in 0..3 {
            let _ = emitter.emit(i);
        }
        emitter.finish();
        Ok::<_, Error>(|| {})
    });
    let subscription = subscribe(events, recorder);
    subscription.request(u64::MAX);
    assert_eq!(subscription.end(), Ok(()));
    assert_eq!(
        *signals.lock().unwrap(),
        [
            Signal::Next(0),
            Signal::Next(1),
            Signal::Next(2),
            Signal::Complete
        ]
    );
}

#[test]
fn a_subscription_can_be_awaited() {
    let runtime = common::current_thread();
    let (recorder, signals) = Recorder::new();
    runtime.block_on(async {
        let subscription = subscribe(items(3), recorder);
        subscription.request(3);
        assert_eq!(subscription.await, Ok(()));
    });
    assert_eq!(signals.lock().unwrap().len(), 4);
}

#[test]
fn the_end_is_delivered_without_demand_and_an_item_waits_for_it() {
    let (recorder, signals) = Recorder::new();
    let subscription = subscribe(items(0), recorder);
    // The stream was empty: its end came inside `subscribe`, no request needed.
    assert!(subscription.is_completed());
    assert_eq!(subscription.end(), Ok(()));
    assert_eq!(*signals.lock().unwrap(), [Signal::Complete]);

    let (recorder, signals) = Recorder::new();
    let subscription = subscribe(items(1), recorder);
    assert!(!subscription.is_completed(), "an item waits for demand");
    assert!(signals.lock().unwrap().is_empty());
    subscription.request(1);
    assert_eq!(subscription.end(), Ok(()));
    assert_eq!(
        *signals.lock().unwrap(),
        [Signal::Next(0), Signal::Complete]
    );
}

/// A subscriber whose `on_complete` panics.
struct PanicsAtTheEnd(Arc<AtomicUsize>);

impl Subscriber<u64, Error> for PanicsAtTheEnd {
    fn on_next(&mut self, _: u64, _: &Demand) {
        self.0.fetch_add(1, SeqCst);
    }
    fn on_error(&mut self, _: Error) {
        unreachable!("the stream does not fail");
    }
    fn on_complete(&mut self) {
        panic!("on_complete failed");
    }
}

#[test]
fn a_panic_in_on_complete_is_reported_once_by_the_subscription() {
    let nexts = Arc::new(AtomicUsize::new(0));
    let subscription = subscribe(items(2), PanicsAtTheEnd(Arc::clone(&nexts)));
    subscription.request(2);
    match subscription.end() {
        Err(Error::Panicked(panic)) => assert_eq!(panic.message(), Some("on_complete failed")),
        other => panic!("not a panic: {other:?}"),
    }
    assert_eq!(nexts.load(SeqCst), 2);
}

#[test]
fn no_signal_follows_a_cancel_that_returned_while_the_stream_was_polled() {
    // The review's case: the cancel completes (on another thread) during the stream's
    // `poll_next`, which then yields an item: the item is not delivered.
    let demand_slot: Arc<Mutex<Option<Demand>>> = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&demand_slot);
    let mut n = 0_u64;
    let stream = futures::stream::poll_fn(move |_| {
        n += 1;
        if n == 2 {
            let demand = slot.lock().unwrap().clone().unwrap();
            thread::spawn(move || demand.cancel()).join().unwrap();
        }
        std::task::Poll::Ready(Some(Ok::<u64, Error>(n)))
    });
    let (recorder, signals) = Recorder::new();
    let runtime = common::multi_thread(1, "subscribe-cancel");
    let subscription = subscribe_on(&runtime, stream, recorder);
    *demand_slot.lock().unwrap() = Some(subscription.demand());
    subscription.request(5);
    assert_eq!(subscription.end(), Err(Error::Cancelled));
    assert_eq!(*signals.lock().unwrap(), [Signal::Next(1)]);
}

#[test]
fn a_panicking_stream_tells_the_subscriber_and_ends_the_subscription() {
    let mut n = 0_u64;
    let stream = futures::stream::poll_fn(move |_| {
        n += 1;
        if n == 3 {
            panic!("stream exploded");
        }
        std::task::Poll::Ready(Some(Ok::<u64, Error>(n)))
    });
    let (recorder, signals) = Recorder::new();
    let subscription = subscribe(stream, recorder);
    subscription.request(10);
    let ended = subscription.end();
    assert_eq!(
        common::panic_message(ended),
        Ok(Some("stream exploded".to_owned()))
    );
    let signals = signals.lock().unwrap();
    assert_eq!(signals[..2], [Signal::Next(1), Signal::Next(2)]);
    match &signals[2..] {
        [Signal::Error(Error::Panicked(panic))] => {
            assert_eq!(panic.message(), Some("stream exploded"))
        }
        other => panic!("not one on_error: {other:?}"),
    }
}
