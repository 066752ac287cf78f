//! Property test: random sequences of operations on one bridged legacy operation,
//! checked step by step against a small sequential reference model.
//!
//! The legacy side is a Begin that hands out its `ApmCallback` and keeps a `Completer`
//! for its own handle, so the test can fire the callback (inline or from another
//! thread), drop it, End, wait on or cancel the legacy handle, while `from_apm`'s future
//! is polled with one of three wakers or dropped.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread;
use std::time::Duration;

use apm_tap::{Abandonment, ApmCallback, AsyncResult, Completer, Error};
use common::{poll_with, CountingWaker};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Poll(usize),
    FireCallback { other_thread: bool },
    DropCallback,
    DropFuture,
    End,
    WaitTimeout,
    Cancel,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3usize).prop_map(Op::Poll),
        any::<bool>().prop_map(|other_thread| Op::FireCallback { other_thread }),
        Just(Op::DropCallback),
        Just(Op::DropFuture),
        Just(Op::End),
        Just(Op::WaitTimeout),
        Just(Op::Cancel),
    ]
}

const VALUE: u32 = 7;

/// The reference model.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Callback {
    NotYet,
    Held,
    Called,
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Legacy {
    Empty,
    Value,
    Cancelled,
    Taken,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fut {
    Alive,
    Dropped,
    Done,
}

struct Model {
    callback: Callback,
    legacy: Legacy,
    future: Fut,
    registered: Option<usize>,
    wakes: [usize; 3],
    ends: usize,
    cancels: usize,
}

impl Model {
    /// What End (or the future's End) gets from the legacy handle.
    fn take(&mut self) -> Result<u32, Error> {
        let taken = match self.legacy {
            Legacy::Value => Ok(VALUE),
            Legacy::Cancelled => Err(Error::Cancelled),
            Legacy::Taken => Err(Error::AlreadyEnded),
            Legacy::Empty => unreachable!("End on an unfinished operation would block"),
        };
        self.legacy = Legacy::Taken;
        taken
    }

    /// The future is woken if it is waiting.
    fn wake(&mut self) {
        if let Some(k) = self.registered.take() {
            self.wakes[k] += 1;
        }
    }
}

type Output = Result<Result<u32, Error>, Error>;

/// The legacy side, as Begin left it: its completer, the callback it was given, and
/// its handle.
struct LegacySide {
    completer: Option<Completer<u32>>,
    callback: Option<ApmCallback>,
    handle: AsyncResult<u32>,
}

/// The system under test.
struct Real {
    future: Option<Box<dyn Future<Output = Output> + Unpin + Send>>,
    legacy: Arc<Mutex<Option<LegacySide>>>,
    ends: Arc<AtomicUsize>,
    cancels: Arc<AtomicUsize>,
}

impl Real {
    fn new() -> Real {
        let legacy = Arc::new(Mutex::new(None));
        let ends = Arc::new(AtomicUsize::new(0));
        let cancels = Arc::new(AtomicUsize::new(0));
        let (l, e, c) = (Arc::clone(&legacy), Arc::clone(&ends), Arc::clone(&cancels));
        let future = apm_tap::from_apm(
            move |callback: ApmCallback| {
                let (completer, handle) = Completer::new();
                *l.lock().unwrap() = Some(LegacySide {
                    completer: Some(completer),
                    callback: Some(callback),
                    handle: handle.clone(),
                });
                handle
            },
            move |handle: AsyncResult<u32>| {
                e.fetch_add(1, SeqCst);
                handle.end()
            },
        )
        .on_cancel(move |_| {
            c.fetch_add(1, SeqCst);
        });
        Real {
            future: Some(Box::new(future)),
            legacy,
            ends,
            cancels,
        }
    }

    fn handle(&self) -> AsyncResult<u32> {
        self.legacy.lock().unwrap().as_ref().unwrap().handle.clone()
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let wakers: Vec<(Arc<CountingWaker>, Waker)> = (0..3).map(|_| CountingWaker::new()).collect();
    let mut model = Model {
        callback: Callback::NotYet,
        legacy: Legacy::Empty,
        future: Fut::Alive,
        registered: None,
        wakes: [0; 3],
        ends: 0,
        cancels: 0,
    };
    let mut real = Real::new();
    for op in ops {
        let begun = model.callback != Callback::NotYet;
        match op {
            Op::Poll(k) if model.future == Fut::Alive => {
                let actual = poll_with(real.future.as_mut().unwrap(), &wakers[k].1);
                if !begun {
                    model.callback = Callback::Held;
                }
                let expected = match model.callback {
                    Callback::Called => {
                        model.ends += 1;
                        Poll::Ready(Ok(model.take()))
                    }
                    Callback::Dropped => {
                        Poll::Ready(Err(Error::Abandoned(Abandonment::CallbackDropped)))
                    }
                    _ => Poll::Pending,
                };
                if expected.is_ready() {
                    model.future = Fut::Done;
                    model.registered = None;
                    real.future = None;
                } else {
                    model.registered = Some(k);
                }
                prop_assert_eq!(actual, expected);
            }
            Op::FireCallback { other_thread } if model.callback == Callback::Held => {
                let (completer, callback) = {
                    let mut legacy = real.legacy.lock().unwrap();
                    let side = legacy.as_mut().unwrap();
                    (
                        side.completer.take().unwrap(),
                        side.callback.take().unwrap(),
                    )
                };
                let fire = move || {
                    let completed = completer.complete(VALUE);
                    callback.call();
                    completed
                };
                let actual = if other_thread {
                    thread::spawn(fire).join().unwrap()
                } else {
                    fire()
                };
                let expected = match model.legacy {
                    Legacy::Empty => {
                        model.legacy = Legacy::Value;
                        Ok(())
                    }
                    _ => Err(VALUE),
                };
                model.callback = Callback::Called;
                match model.future {
                    Fut::Alive => model.wake(),
                    Fut::Dropped => {
                        model.ends += 1;
                        let _ = model.take();
                    }
                    Fut::Done => {}
                }
                prop_assert_eq!(actual, expected);
            }
            Op::DropCallback if model.callback == Callback::Held => {
                let callback = real
                    .legacy
                    .lock()
                    .unwrap()
                    .as_mut()
                    .unwrap()
                    .callback
                    .take();
                drop(callback);
                model.callback = Callback::Dropped;
                if model.future == Fut::Alive {
                    model.wake();
                }
            }
            Op::DropFuture if model.future == Fut::Alive => {
                real.future = None;
                match model.callback {
                    Callback::Held => model.cancels += 1,
                    Callback::Called => {
                        model.ends += 1;
                        let _ = model.take();
                    }
                    Callback::NotYet | Callback::Dropped => {}
                }
                model.future = Fut::Dropped;
                model.registered = None;
            }
            Op::End if begun => {
                let handle = real.handle();
                if model.legacy == Legacy::Empty {
                    prop_assert_eq!(handle.wait_timeout(Duration::ZERO), Ok(false));
                } else {
                    prop_assert_eq!(handle.end(), model.take());
                }
            }
            Op::WaitTimeout if begun => {
                let expected = model.legacy != Legacy::Empty;
                prop_assert_eq!(
                    real.handle().wait_timeout(Duration::from_micros(200)),
                    Ok(expected)
                );
            }
            Op::Cancel if begun => {
                real.handle().cancel();
                if model.legacy == Legacy::Empty {
                    model.legacy = Legacy::Cancelled;
                }
            }
            _ => {} // Not applicable in this state.
        }
        prop_assert_eq!(real.ends.load(SeqCst), model.ends, "end count");
        prop_assert_eq!(real.cancels.load(SeqCst), model.cancels, "on_cancel count");
        for (k, (counter, _)) in wakers.iter().enumerate() {
            prop_assert_eq!(counter.wakes(), model.wakes[k], "wakes of waker {}", k);
            let held = usize::from(model.registered == Some(k));
            prop_assert_eq!(counter.clones_held(), held, "clones of waker {} held", k);
        }
    }
    Ok(())
}

proptest! {
    // Under Miri: a few cases (its seeds vary the schedules), and no failure file,
    // which would need the file system that Miri's isolation hides.
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 512 },
        failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence },
        ..ProptestConfig::default()
    })]

    #[test]
    fn bridged_operation_matches_the_model(ops in proptest::collection::vec(op(), 1..16)) {
        run(ops)?;
    }
}
