//! Multi-shot callbacks and progress, both directions.
//!
//! - Legacy to async: a chunked transfer in the style of libcurl's write callback,
//!   which pauses when the reader falls behind and is resumed later; a sensor that
//!   fires faster than anyone reads it; a copy routine with a progress callback.
//! - Async to legacy: a stream pushed to a legacy subscriber with demand, and an async
//!   operation's progress and result delivered to a plain thread's callbacks.
//!
//! Run with `cargo run --example events`.

use std::io;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use apm_tap::progress;
use apm_tap::stream::{from_events, subscribe, Buffer, Demand, Emit, Overflow, Subscriber};
use futures::StreamExt;

// ---------------------------------------------------------------------------------------
// The legacy side, written long ago: it calls back from a thread of its own.

/// What the write callback tells the transfer: take the next chunk, or pause (the chunk
/// was not taken: it comes again after `resume`), as `CURL_WRITEFUNC_PAUSE` does.
enum Flow {
    Continue,
    Pause,
    Abort,
}

/// A running transfer: `resume` after a pause, `cancel` to stop it.
#[derive(Clone)]
struct Transfer {
    control: mpsc::Sender<bool>,
}

impl Transfer {
    fn resume(&self) {
        let _ = self.control.send(true);
    }
    fn cancel(&self) {
        let _ = self.control.send(false);
    }
}

/// Sends `chunks` chunks of 128 bytes to `on_chunk`, then reports the end to `on_done`.
fn start_transfer(
    chunks: u8,
    mut on_chunk: impl FnMut(&Transfer, &[u8]) -> Flow + Send + 'static,
    on_done: impl FnOnce(Result<(), String>) + Send + 'static,
) -> Transfer {
    let (control, commands) = mpsc::channel();
    let transfer = Transfer { control };
    let worker = transfer.clone();
    thread::spawn(move || {
        for n in 0..chunks {
            let chunk = [n; 128];
            loop {
                match on_chunk(&worker, &chunk) {
                    Flow::Continue => break,
                    Flow::Pause => match commands.recv() {
                        Ok(true) => continue, // resumed: deliver the same chunk again
                        _ => return on_done(Err("cancelled".into())),
                    },
                    Flow::Abort => return on_done(Err("aborted by the callback".into())),
                }
            }
        }
        on_done(Ok(()));
    });
    transfer
}

/// A copy routine that reports the percentage done to `on_progress`.
fn copy_files(count: u32, on_progress: impl Fn(u32)) -> u32 {
    for i in 1..=count {
        on_progress(i * 100 / count);
    }
    count
}

/// A legacy consumer that wants to be called, and asks for two items at a time.
struct Printer {
    items: Vec<u32>,
}

impl Subscriber<u32, io::Error> for Printer {
    fn on_next(&mut self, item: u32, demand: &Demand) {
        self.items.push(item);
        if self.items.len() % 2 == 0 {
            demand.request(2);
        }
    }
    fn on_error(&mut self, error: io::Error) {
        println!("subscriber: failed: {error}");
    }
    fn on_complete(&mut self) {
        println!("subscriber: got {:?}, two per request", self.items);
    }
}

/// A sensor that calls `on_reading` 1,000 times, as fast as it can.
fn start_sensor(on_reading: impl Fn(u32) + Send + 'static) -> thread::JoinHandle<()> {
    thread::spawn(move || (1..=1_000).for_each(on_reading))
}

// ---------------------------------------------------------------------------------------
// The bridge, and async code that reads it.

#[tokio::main]
async fn main() -> io::Result<()> {
    let (paused, pauses) = mpsc::channel();
    // At most 4 chunks wait for the reader; a full buffer pauses the transfer, and the
    // reader's progress resumes it (`when_ready`).
    let chunks = from_events(Buffer::bounded(4, Overflow::Suspend), move |emitter| {
        let done = emitter.clone();
        let transfer = start_transfer(
            32,
            move |transfer, chunk| match emitter.emit(chunk.to_vec()) {
                Emit::Full(_) => {
                    paused.send(()).unwrap();
                    let transfer = transfer.clone();
                    emitter.when_ready(move || transfer.resume());
                    Flow::Pause
                }
                Emit::Closed(_) => Flow::Abort,
                _ => Flow::Continue,
            },
            move |result| {
                let _ = match result {
                    Ok(()) => done.finish(),
                    Err(e) => done.fail(io::Error::other(e)).is_ok(),
                };
            },
        );
        // The registration: undone exactly once, when the stream ends or is dropped.
        Ok::<_, io::Error>(move || transfer.cancel())
    });
    let mut chunks = std::pin::pin!(chunks);
    let mut bytes = 0;
    let mut count = 0;
    while let Some(chunk) = chunks.next().await {
        bytes += chunk?.len();
        count += 1;
        // A slow reader: the transfer has to wait for it.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "transfer: {count} chunks, {bytes} bytes, paused {} times for a slow reader",
        pauses.try_iter().count()
    );

    // Only the newest reading matters: `latest` keeps one, the sensor never waits.
    let readings = from_events(Buffer::latest(), |emitter| {
        let sensor = start_sensor(move |reading| {
            let _ = emitter.emit(reading);
        });
        Ok::<_, io::Error>(move || sensor.join().unwrap())
    });
    let mut readings = std::pin::pin!(readings);
    let mut seen = Vec::new();
    while let Some(reading) = readings.next().await {
        match reading {
            Ok(reading) => seen.push(reading),
            // The sensor's thread ended and dropped its callback without a word: the
            // stream says so instead of waiting forever.
            Err(end) => println!("sensor: the stream ended with \"{end}\""),
        }
    }
    println!(
        "sensor: fired 1000 readings, the reader saw {} of them, the last {:?}",
        seen.len(),
        seen.last()
    );

    // A legacy progress callback, awaited: every report comes before the result.
    let mut reports = Vec::new();
    let copied = progress::reporting_with(Buffer::unbounded(), |progress| async move {
        copy_files(4, |percent| {
            let _ = progress.report(percent);
        })
    })
    .on_progress(|percent| reports.push(percent))
    .await;
    println!("copy: {copied} files, progress {reports:?}");

    // Async to legacy: a stream pushed to a subscriber that asks for two at a time...
    let numbers = futures::stream::iter(1..=10).map(Ok::<u32, io::Error>);
    let subscription = subscribe(numbers, Printer { items: Vec::new() });
    subscription.request(2);
    subscription.await.map_err(io::Error::other)?;

    // ...and an async operation with progress, begun and ended by a plain thread.
    let legacy = std::thread::spawn(|| {
        let handle = progress::begin(
            |progress| async move {
                for step in 1..=3 {
                    let _ = progress.report(step);
                    tokio::task::yield_now().await;
                }
                "report written"
            },
            |step: u32| println!("plain thread: step {step} of 3"),
        );
        handle.end()
    });
    println!("plain thread: {:?}", legacy.join().unwrap());
    Ok(())
}
