//! libuv through apm-tap, both ways: awaited in tokio with `timeout` and `join_all`, and
//! called from plain threads as Begin/End. `cargo run -p apm-tap-uv --example uv_demo`
//! (needs the system libuv: `apt-get install libuv1-dev`).

use std::io;
use std::sync::mpsc;
use std::time::Duration;

use apm_tap::{AsyncCallback, AsyncResult, State};
use apm_tap_uv::{Stat, Uv};
use futures::future::join_all;
use tokio::time::timeout;

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

/// Reads a whole file through libuv: open, stat, read, close.
async fn read_file(uv: &Uv, path: &str) -> io::Result<Vec<u8>> {
    let fd = uv.open(path, libc::O_RDONLY, 0).await?;
    let size = uv.stat(path).await?.size();
    let bytes = uv
        .read(fd, usize::try_from(size).unwrap_or(usize::MAX), 0)
        .await;
    uv.close(fd).await?;
    bytes
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uv = Uv::new()?;

    // TAP: futures, composed with tokio's timeout and join_all.
    let bytes = timeout(Duration::from_secs(5), read_file(&uv, FILE)).await??;
    let first_line = String::from_utf8_lossy(&bytes);
    let first_line = first_line.lines().next().unwrap_or_default();
    println!(
        "read {} bytes of {FILE} through libuv; first line: {first_line}",
        bytes.len()
    );
    let lookups = join_all(["localhost", "127.0.0.1"].map(|name| uv.getaddrinfo(name, None)));
    for (name, addresses) in ["localhost", "127.0.0.1"]
        .iter()
        .zip(timeout(Duration::from_secs(5), lookups).await?)
    {
        println!("{name} resolves to {:?}", addresses?);
    }
    let squares = join_all((1..=4_u64).map(|n| uv.queue_work(move || n * n))).await;
    let squares: io::Result<Vec<u64>> = squares.into_iter().collect();
    println!("squares computed on libuv's thread pool: {:?}", squares?);

    // APM: the same operations as Begin/End, from a plain thread with no runtime.
    let uv = std::sync::Arc::new(uv);
    let threaded = std::sync::Arc::clone(&uv);
    let report = tokio::task::spawn_blocking(move || {
        let (tx, rx) = mpsc::channel();
        let callback = AsyncCallback::new(move |handle: AsyncResult<io::Result<Stat>>| {
            // The callback ends the operation, as an APM callback does.
            tx.send(handle.end()).unwrap();
        });
        let _handle = threaded.begin_stat(FILE, callback, State::new("from a plain thread"));
        let by_callback = rx.recv().unwrap().unwrap().unwrap().size();
        let sync = threaded.begin_stat_sync(FILE, AsyncCallback::none(), State::none());
        let synchronously = sync.completed_synchronously();
        let by_end = sync.end().unwrap().unwrap().size();
        (by_callback, by_end, synchronously)
    })
    .await?;
    println!(
        "Begin/End from a plain thread: {} bytes by callback, {} by blocking End \
         (libuv's synchronous mode, completed synchronously: {})",
        report.0, report.1, report.2
    );
    Ok(())
}
