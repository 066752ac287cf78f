//! Posted dispatch against what a user writes without it: a Begin-side callback posted
//! to a tokio runtime by `Builder::dispatch(Dispatch::tokio(..))`, for an operation that
//! completes inside `begin`, against `tokio::spawn` of a task that calls the same
//! callback with the same value, and against the same operation with an inline callback
//! that spawns the real one (what a user writes without `Dispatch`).
//!
//! `cargo bench -p apm-tap-benches --bench dispatch` prints, over interleaved rounds
//! (each round times both rows in turn), the median time per operation, the median of
//! the rounds' ratios, and allocations per operation.

// The counting global allocator needs `unsafe impl GlobalAlloc`; it forwards to `System`.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use apm_tap::{AsyncResult, Builder, Dispatch};

#[path = "counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const OPS: u64 = 20_000;
const ROUNDS: usize = 31;

/// Counts callbacks; tells the waiting thread when the last one ran.
struct Done {
    ran: AtomicU64,
    sum: AtomicU64,
    last: std::sync::Mutex<Option<mpsc::Sender<u64>>>,
}

impl Done {
    fn new() -> (Arc<Done>, mpsc::Receiver<u64>) {
        let (tx, rx) = mpsc::channel();
        let done = Arc::new(Done {
            ran: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            last: std::sync::Mutex::new(Some(tx)),
        });
        (done, rx)
    }

    fn callback(&self, value: u64) {
        self.sum.fetch_add(value, SeqCst);
        if self.ran.fetch_add(1, SeqCst) + 1 == OPS {
            let sender = self.last.lock().unwrap().take().unwrap();
            sender.send(self.sum.load(SeqCst)).unwrap();
        }
    }
}

fn tokio_spawn(handle: &tokio::runtime::Handle) -> u64 {
    let (done, finished) = Done::new();
    for i in 0..OPS {
        let done = Arc::clone(&done);
        drop(handle.spawn(async move { done.callback(i) }));
    }
    finished.recv().unwrap()
}

/// What a user writes to post a callback without `Dispatch`: an inline callback that
/// spawns the real one.
fn hand_posted(handle: &tokio::runtime::Handle) -> u64 {
    let (done, finished) = Done::new();
    for i in 0..OPS {
        let done = Arc::clone(&done);
        let runtime = handle.clone();
        drop(
            Builder::new()
                .callback(move |h: AsyncResult<u64>| {
                    drop(runtime.spawn(async move { done.callback(h.end().unwrap()) }));
                })
                .begin(async move { i }),
        );
    }
    finished.recv().unwrap()
}

fn apm_tap_posted(handle: &tokio::runtime::Handle) -> u64 {
    let (done, finished) = Done::new();
    let dispatch = Dispatch::tokio(handle.clone());
    for i in 0..OPS {
        let done = Arc::clone(&done);
        drop(
            Builder::new()
                .dispatch(dispatch.clone())
                .callback(move |h: AsyncResult<u64>| done.callback(h.end().unwrap()))
                .begin(async move { i }),
        );
    }
    finished.recv().unwrap()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    type Row = (&'static str, fn(&tokio::runtime::Handle) -> u64);
    let rows: [Row; 3] = [
        ("tokio_spawn_callback", tokio_spawn),
        ("hand_posted", hand_posted),
        ("apm_tap_posted", apm_tap_posted),
    ];
    let expected = OPS * (OPS - 1) / 2;
    // Warm up both.
    for (_, run) in rows {
        assert_eq!(run(&handle), expected);
    }
    let mut times = vec![Vec::new(); rows.len()];
    let mut allocations = vec![0_usize; rows.len()];
    let mut ratios = Vec::new();
    let mut hand_ratios = Vec::new();
    for _ in 0..ROUNDS {
        let mut round = Vec::new();
        for (i, (_, run)) in rows.iter().enumerate() {
            let before = counting::allocations();
            let start = Instant::now();
            assert_eq!(run(&handle), expected);
            let per_op = start.elapsed().as_nanos() as f64 / OPS as f64;
            allocations[i] += counting::allocations() - before;
            times[i].push(per_op);
            round.push(per_op);
        }
        ratios.push(round[2] / round[0]);
        hand_ratios.push(round[2] / round[1]);
    }
    println!("\n## Posted dispatch: {OPS} operations per run, {ROUNDS} interleaved rounds\n");
    println!("| variant | median per operation | allocations per operation |");
    println!("|---|---|---|");
    for (i, (name, _)) in rows.iter().enumerate() {
        println!(
            "| {name} | {:.1} ns | {:.2} |",
            median(times[i].clone()),
            allocations[i] as f64 / (ROUNDS as u64 * OPS) as f64
        );
    }
    println!(
        "\napm_tap_posted / tokio_spawn_callback, median of the rounds' ratios: **{:.2}**",
        median(ratios)
    );
    println!(
        "apm_tap_posted / hand_posted, median of the rounds' ratios: **{:.2}**",
        median(hand_ratios)
    );
}
