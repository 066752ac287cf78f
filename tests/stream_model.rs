//! Property test: random sequences of emits, polls, ends and drops on one callback
//! stream, checked step by step against a small sequential model of its buffer, with
//! items that count their drops: every item emitted is yielded or dropped exactly once
//! (rule 23), produced = delivered + dropped elsewhere.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll, Waker};
use std::thread;

use apm_tap::stream::{from_events, Buffer, Emit, Emitter, EventStream, Overflow};
use apm_tap::{Abandonment, Error};
use futures::StreamExt;
use proptest::prelude::*;

/// An item that counts its drops, per id.
#[derive(Debug)]
struct Item {
    id: usize,
    drops: Arc<Vec<AtomicUsize>>,
}

impl Drop for Item {
    fn drop(&mut self) {
        self.drops[self.id].fetch_add(1, SeqCst);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Emit { other_thread: bool },
    Poll,
    Finish,
    Fail,
    DropEmitter,
    DropStream,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(|other_thread| Op::Emit { other_thread }),
        3 => Just(Op::Poll),
        1 => Just(Op::Finish),
        1 => Just(Op::Fail),
        1 => Just(Op::DropEmitter),
        1 => Just(Op::DropStream),
    ]
}

fn buffer() -> impl Strategy<Value = Buffer> {
    let overflow = prop_oneof![
        Just(Overflow::Suspend),
        Just(Overflow::DropOldest),
        Just(Overflow::DropNewest),
        Just(Overflow::Fail),
    ];
    prop_oneof![
        (1..10usize, overflow).prop_map(|(capacity, overflow)| Buffer::bounded(capacity, overflow)),
        Just(Buffer::latest()),
        Just(Buffer::unbounded()),
    ]
}

/// What the model expects of an emit: the outcome's kind, and the id handed back.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Queued,
    Evicted(usize),
    Rejected(usize),
    Full(usize),
    Closed(usize),
}

#[derive(Debug, PartialEq, Eq)]
enum ModelEnd {
    Open,
    /// Ended with this error after the buffer (`None`: finished).
    Ending(Option<Error>),
    Closed,
}

struct Model {
    buffer: Buffer,
    items: VecDeque<usize>,
    end: ModelEnd,
}

impl Model {
    fn emit(&mut self, id: usize) -> Expected {
        if self.end != ModelEnd::Open {
            return Expected::Closed(id);
        }
        let full = self
            .buffer
            .capacity()
            .is_some_and(|c| self.items.len() >= c);
        if !full {
            self.items.push_back(id);
            return Expected::Queued;
        }
        match self.buffer.overflow() {
            Some(Overflow::Suspend) => Expected::Full(id),
            Some(Overflow::DropNewest) => Expected::Rejected(id),
            Some(Overflow::Fail) => {
                self.end = ModelEnd::Ending(Some(Error::Overflow));
                Expected::Rejected(id)
            }
            _ => {
                let oldest = self.items.pop_front().unwrap();
                self.items.push_back(id);
                Expected::Evicted(oldest)
            }
        }
    }

    fn end(&mut self, error: Option<Error>) -> bool {
        if self.end != ModelEnd::Open {
            return false;
        }
        self.end = ModelEnd::Ending(error);
        true
    }

    /// The poll's expected result: an item's id, an error, the end, or pending.
    fn poll(&mut self) -> Poll<Option<Result<usize, Error>>> {
        if let Some(id) = self.items.pop_front() {
            return Poll::Ready(Some(Ok(id)));
        }
        match std::mem::replace(&mut self.end, ModelEnd::Closed) {
            ModelEnd::Open => {
                self.end = ModelEnd::Open;
                Poll::Pending
            }
            ModelEnd::Ending(error) => Poll::Ready(error.map(Err)),
            ModelEnd::Closed => Poll::Ready(None),
        }
    }
}

fn outcome(emit: Emit<Item>) -> Expected {
    match emit {
        Emit::Queued => Expected::Queued,
        Emit::Evicted(item) => Expected::Evicted(item.id),
        Emit::Rejected(item) => Expected::Rejected(item.id),
        Emit::Full(item) => Expected::Full(item.id),
        Emit::Closed(item) => Expected::Closed(item.id),
        Emit::WouldDeadlock(item) => panic!("emit never refuses to block: {}", item.id),
    }
}

fn run(buffer: Buffer, ops: &[Op]) {
    let drops: Arc<Vec<AtomicUsize>> =
        Arc::new((0..ops.len()).map(|_| AtomicUsize::new(0)).collect());
    let unregisters = Arc::new(AtomicUsize::new(0));
    let (give, take) = mpsc::channel();
    let counted = Arc::clone(&unregisters);
    let mut stream: Option<EventStream<Item>> =
        Some(from_events(buffer, move |emitter: Emitter<Item>| {
            give.send(emitter).unwrap();
            Ok::<_, Error>(move || {
                counted.fetch_add(1, SeqCst);
            })
        }));
    let cx = &mut Context::from_waker(Waker::noop());
    assert!(stream.as_mut().unwrap().poll_next_unpin(cx).is_pending());
    let first = take.recv().unwrap();
    // Two emitters, so that dropping one does not abandon the stream; the model
    // abandons when the second goes.
    let mut emitters = vec![first.clone(), first];
    let mut model = Model {
        buffer,
        items: VecDeque::new(),
        end: ModelEnd::Open,
    };
    let mut delivered = Vec::new();
    let mut produced = 0;
    for (id, op) in ops.iter().enumerate() {
        match op {
            Op::Emit { other_thread } => {
                let Some(emitter) = emitters.last() else {
                    continue;
                };
                let item = Item {
                    id,
                    drops: Arc::clone(&drops),
                };
                produced += 1;
                let got = if *other_thread {
                    let emitter = emitter.clone();
                    thread::spawn(move || outcome(emitter.emit(item)))
                        .join()
                        .unwrap()
                } else {
                    outcome(emitter.emit(item))
                };
                assert_eq!(got, model.emit(id), "emit {id}");
            }
            Op::Poll => {
                let Some(stream) = stream.as_mut() else {
                    continue;
                };
                let got = stream.poll_next_unpin(cx).map(|item| {
                    item.map(|result| {
                        result.map(|item| {
                            delivered.push(item.id);
                            item.id
                        })
                    })
                });
                assert_eq!(got, model.poll());
            }
            Op::Finish => {
                let Some(emitter) = emitters.last() else {
                    continue;
                };
                assert_eq!(emitter.finish(), model.end(None));
            }
            Op::Fail => {
                let Some(emitter) = emitters.last() else {
                    continue;
                };
                let failed = emitter.fail(Error::Cancelled).is_ok();
                assert_eq!(failed, model.end(Some(Error::Cancelled)));
            }
            Op::DropEmitter => {
                if emitters.pop().is_some() && emitters.is_empty() {
                    model.end(Some(Error::Abandoned(Abandonment::EmittersDropped)));
                }
            }
            Op::DropStream => {
                if stream.take().is_some() {
                    model.items.clear();
                    model.end = ModelEnd::Closed;
                    assert_eq!(unregisters.load(SeqCst), 1);
                }
            }
        }
        // The registration is undone exactly when the end was yielded or the stream
        // dropped.
        let undone = usize::from(stream.is_none() || model.end == ModelEnd::Closed);
        assert_eq!(unregisters.load(SeqCst), undone, "after {op:?}");
    }
    drop(stream);
    drop(emitters);
    assert_eq!(unregisters.load(SeqCst), 1);
    let mut dropped_once = 0;
    for (id, count) in drops.iter().enumerate() {
        let count = count.load(SeqCst);
        assert!(count <= 1, "item {id} dropped {count} times");
        dropped_once += count;
    }
    // Every item produced was dropped exactly once: by the test after it was yielded,
    // by the producer when handed back, or by the stream.
    assert_eq!(dropped_once, produced);
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "yielded in order: {delivered:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 512 },
        // Miri's isolation has no file system for the regressions file.
        failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence },
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_item_is_yielded_or_dropped_exactly_once(
        buffer in buffer(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(buffer, &ops);
    }
}
