//! Callback streams against the channels users hand-roll for them: one producer thread
//! emits into a bounded buffer that one consumer task (on a current-thread runtime)
//! reads, for `apm_tap::stream::from_events` (a `Suspend` buffer, `emit_blocking`),
//! `tokio::sync::mpsc` (`blocking_send`) and `futures::channel::mpsc`
//! (`block_on(send)`), with the same capacity.
//!
//! `cargo bench -p apm-tap-benches --bench stream` runs the criterion group, then
//! interleaved rounds (each round times every variant in turn, so that the machine's
//! changes of speed hit them alike) and prints the medians per item, the median ratio
//! to the fastest channel, and allocations per item.

// The counting global allocator needs `unsafe impl GlobalAlloc`; it forwards to `System`.
#![allow(unsafe_code)]

use std::thread;
use std::time::{Duration, Instant};

use apm_tap::stream::{Buffer, Emit, Overflow};
use criterion::Criterion;
use futures::{SinkExt, StreamExt};

#[path = "counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Items per run, and the buffer's capacity.
const ITEMS: u64 = 20_000;
const CAPACITY: usize = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// apm-tap: the producer thread starts when the first poll registers, and is joined by
/// the unregister call.
fn apm_tap(runtime: &tokio::runtime::Runtime) -> u64 {
    let stream =
        apm_tap::stream::from_events(Buffer::bounded(CAPACITY, Overflow::Suspend), |emitter| {
            let producer = thread::spawn(move || {
                for i in 0..ITEMS {
                    assert_eq!(emitter.emit_blocking(i), Emit::Queued);
                }
                emitter.finish();
            });
            Ok::<_, apm_tap::Error>(move || producer.join().unwrap())
        });
    runtime.block_on(stream.fold(0, |sum, item| async move { sum + item.unwrap() }))
}

fn tokio_mpsc(runtime: &tokio::runtime::Runtime) -> u64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel(CAPACITY);
    let producer = thread::spawn(move || {
        for i in 0..ITEMS {
            tx.blocking_send(i).unwrap();
        }
    });
    let sum = runtime.block_on(async {
        let mut sum = 0;
        while let Some(item) = rx.recv().await {
            sum += item;
        }
        sum
    });
    producer.join().unwrap();
    sum
}

fn futures_mpsc(runtime: &tokio::runtime::Runtime) -> u64 {
    // futures' bounded channel holds `buffer` plus one slot per sender.
    let (mut tx, rx) = futures::channel::mpsc::channel(CAPACITY - 1);
    let producer = thread::spawn(move || {
        for i in 0..ITEMS {
            futures::executor::block_on(tx.send(i)).unwrap();
        }
    });
    let sum = runtime.block_on(rx.fold(0, |sum, item| async move { sum + item }));
    producer.join().unwrap();
    sum
}

type Variant = (&'static str, fn(&tokio::runtime::Runtime) -> u64);

const VARIANTS: [Variant; 3] = [
    ("tokio_mpsc", tokio_mpsc),
    ("futures_mpsc", futures_mpsc),
    ("apm_tap", apm_tap),
];

const SUM: u64 = ITEMS * (ITEMS - 1) / 2;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    let runtime = runtime();
    let mut group = criterion.benchmark_group("stream_one_producer_one_consumer");
    for (name, run) in VARIANTS {
        group.bench_function(name, |b| b.iter(|| assert_eq!(run(&runtime), SUM)));
    }
    group.finish();
    criterion.final_summary();

    const ROUNDS: usize = 41;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut ratios = Vec::new();
    let mut allocations = vec![0_usize; VARIANTS.len()];
    for _ in 0..ROUNDS {
        let mut round = Vec::new();
        for (i, (_, run)) in VARIANTS.iter().enumerate() {
            let before = counting::allocations();
            let start = Instant::now();
            assert_eq!(run(&runtime), SUM);
            let per_item = start.elapsed().as_nanos() as f64 / ITEMS as f64;
            allocations[i] += counting::allocations() - before;
            times[i].push(per_item);
            round.push(per_item);
        }
        ratios.push(round[2] / round[0].min(round[1]));
    }
    println!("\n## Callback stream: one producer thread, one consumer task, capacity {CAPACITY}, {ITEMS} items per run, {ROUNDS} interleaved rounds\n");
    println!("| variant | median per item | allocations per item |");
    println!("|---|---|---|");
    for (i, (name, _)) in VARIANTS.iter().enumerate() {
        println!(
            "| {name} | {:.1} ns | {:.4} |",
            median(times[i].clone()),
            allocations[i] as f64 / (ROUNDS as u64 * ITEMS) as f64
        );
    }
    println!(
        "\napm_tap / fastest channel, median of the rounds' ratios: **{:.2}**",
        median(ratios)
    );
}
