//! A multi-shot legacy callback API awaited as a `Stream`: a chunked transfer in the
//! style of libcurl's write callback, which can pause when the reader falls behind and
//! be resumed later, and a sensor that fires faster than anyone reads it.
//!
//! Run with `cargo run --example events`.

use std::io;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use apm_tap::stream::{from_events, Buffer, Emit, Overflow};
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
    Ok(())
}
