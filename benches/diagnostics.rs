//! What the `diagnostics` feature costs: apm-tap with the feature against apm-tap
//! without it, in the same run.
//!
//! `cargo bench -p apm-tap-benches --bench diagnostics` builds this benchmark twice:
//! without the feature (this process) and with it (the same file, built by
//! `cargo bench --no-run --features diagnostics` and run as a child process, one round
//! at a time). Rounds alternate between the two, and the table gives the median time
//! per operation of each and the median of the rounds' ratios, for:
//!
//! - `pending_8_threads`: 8 threads each begin 125,000 operations (`Completer::new`),
//!   so that 10^6 are pending at once, then each completes and ends its own: with the
//!   feature, every begin lists its operation and every end unlists it, from 8 threads
//!   at once. A registry behind one lock would serialise them.
//! - `pending_1_thread`: the same on one thread: beside the row above, whether the
//!   feature's cost grows with the threads.
//! - `sync_completion`: scenario 1 of `bridge.rs` on one thread, 10^6 times: a
//!   `from_apm` whose legacy Begin calls back inside Begin, polled once.

use std::env;
use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use apm_tap::{ApmCallback, AsyncHandle, Completer};
use futures::task::noop_waker_ref;

const THREADS: usize = 8;
const PENDING: usize = 1_000_000;
const SYNC_OPS: usize = 1_000_000;
const ROUNDS: usize = 9;

/// Nanoseconds per operation: 10^6 pending across 8 threads, begun then ended.
fn pending_8_threads() -> f64 {
    pending(THREADS)
}

/// Nanoseconds per operation: 10^6 pending on one thread, begun then ended.
fn pending_1_thread() -> f64 {
    pending(1)
}

/// Nanoseconds per operation: 10^6 pending across `threads`, begun then ended.
fn pending(threads: usize) -> f64 {
    let each = PENDING / threads;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                let ops: Vec<_> = (0..each).map(|_| Completer::<u64>::new()).collect();
                barrier.wait(); // all pending
                let mut sum = 0;
                for (i, (completer, handle)) in ops.into_iter().enumerate() {
                    completer.complete(i as u64).unwrap();
                    sum += handle.end().unwrap();
                }
                assert_eq!(sum, (each as u64) * (each as u64 - 1) / 2);
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    barrier.wait();
    for worker in workers {
        worker.join().unwrap();
    }
    start.elapsed().as_nanos() as f64 / PENDING as f64
}

struct Done;

impl AsyncHandle for Done {
    fn completed_synchronously(&self) -> bool {
        false
    }
}

/// Nanoseconds per operation: scenario 1, a `from_apm` called back inside Begin.
fn sync_completion() -> f64 {
    let mut cx = Context::from_waker(noop_waker_ref());
    let start = Instant::now();
    for i in 0..SYNC_OPS as u64 {
        let mut read = apm_tap::from_apm(
            |callback: ApmCallback| {
                callback.call();
                Done
            },
            move |_: Done| i,
        );
        let polled = Pin::new(&mut read).poll(&mut cx);
        assert_eq!(std::hint::black_box(polled), Poll::Ready(Ok(i)));
    }
    start.elapsed().as_nanos() as f64 / SYNC_OPS as f64
}

/// A row: its name, and what times one round of it.
type Row = (&'static str, fn() -> f64);

/// The rows.
const ROWS: [Row; 3] = [
    ("pending_8_threads", pending_8_threads),
    ("pending_1_thread", pending_1_thread),
    ("sync_completion", sync_completion),
];

/// One round of each row.
fn round() -> Vec<f64> {
    ROWS.iter().map(|(_, row)| row()).collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// What `command` writes, once it has succeeded.
fn stdout_of(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Builds this benchmark with the feature and returns the executable's path.
fn build_with_the_feature() -> String {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    stdout_of(Command::new(cargo).args([
        "bench",
        "--no-run",
        "--quiet",
        "-p",
        "apm-tap-benches",
        "--bench",
        "diagnostics",
        "--features",
        "diagnostics",
        "--message-format=json",
    ]))
    .lines()
    .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
    .filter(|message| message["target"]["name"] == "diagnostics")
    .find_map(|message| message["executable"].as_str().map(String::from))
    .expect("cargo names the benchmark's executable")
}

/// Runs one round in the build with the feature.
fn round_with_the_feature(executable: &str) -> Vec<f64> {
    stdout_of(Command::new(executable).arg("--one-round"))
        .split_whitespace()
        .map(|time| time.parse().unwrap())
        .collect()
}

fn main() {
    if env::args().any(|arg| arg == "--one-round") {
        let times: Vec<String> = round().iter().map(f64::to_string).collect();
        println!("{}", times.join(" "));
        return;
    }
    if cfg!(feature = "diagnostics") {
        panic!("run it without the feature: it builds the variant with it itself");
    }
    let with = build_with_the_feature();
    // Warm up both.
    round();
    round_with_the_feature(&with);
    let (mut off, mut on, mut ratios) = (vec![vec![]; 3], vec![vec![]; 3], vec![vec![]; 3]);
    for i in 0..ROUNDS {
        let (without, with) = if i % 2 == 0 {
            let without = round();
            (without, round_with_the_feature(&with))
        } else {
            let with = round_with_the_feature(&with);
            (round(), with)
        };
        for row in 0..ROWS.len() {
            off[row].push(without[row]);
            on[row].push(with[row]);
            ratios[row].push(with[row] / without[row]);
        }
        // Let the machine settle between rounds of 10^6 allocations.
        thread::sleep(Duration::from_millis(100));
    }
    println!("\n## The diagnostics feature: {ROUNDS} interleaved rounds\n");
    println!("| row | without | with | with / without, median of the rounds' ratios |");
    println!("|---|---|---|---|");
    for (row, (name, _)) in ROWS.iter().enumerate() {
        println!(
            "| {name} | {:.1} ns | {:.1} ns | **{:.2}** |",
            median(off[row].clone()),
            median(on[row].clone()),
            median(ratios[row].clone())
        );
    }
}
