//! A realistic legacy API in APM style, a file reader, wrapped into futures and awaited
//! with `tokio::time::timeout`, `select!` and `join_all`.
//!
//! `begin_read` completes synchronously when the file is cached and on a worker thread
//! otherwise; `cancel` stops a read in flight.
//!
//! `cargo run --example legacy_file`

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use apm_tap::{AsyncCallback, AsyncResult, State};

type ReadResult = io::Result<Vec<u8>>;

/// The legacy reader. It knows nothing of futures.
struct LegacyFile {
    cache: Mutex<HashMap<PathBuf, Vec<u8>>>,
    /// Simulated disk latency per read.
    latency: Duration,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl LegacyFile {
    fn begin_read(
        self: &Arc<Self>,
        path: &Path,
        callback: AsyncCallback<ReadResult>,
        state: State,
    ) -> AsyncResult<ReadResult> {
        let (completer, handle) = apm_tap::Builder::new()
            .callback(callback)
            .state(state)
            .completer();
        if let Some(bytes) = self.cache.lock().unwrap().get(path) {
            let _ = completer.complete_synchronously(Ok(bytes.clone()));
            return handle;
        }
        let (me, path) = (Arc::clone(self), path.to_owned());
        let worker = thread::spawn(move || {
            // The slow disk, checking for cancellation as it goes.
            for _ in 0..me.latency.as_millis() {
                if completer.is_cancelled() {
                    println!("    legacy: read of {} stopped by cancel", name(&path));
                    return;
                }
                thread::sleep(Duration::from_millis(1));
            }
            let result = std::fs::read(&path);
            if let Ok(bytes) = &result {
                me.cache.lock().unwrap().insert(path, bytes.clone());
            }
            let _ = completer.complete(result);
        });
        self.workers.lock().unwrap().push(worker);
        handle
    }

    fn end_read(&self, handle: AsyncResult<ReadResult>) -> ReadResult {
        apm_tap::flatten(handle.end())
    }

    fn cancel(&self, handle: &AsyncResult<ReadResult>) {
        handle.cancel();
    }

    fn join_workers(&self) {
        for worker in self.workers.lock().unwrap().drain(..) {
            worker.join().unwrap();
        }
    }
}

/// The wrapper: one line of `try_from_apm` turns Begin/End/Cancel into a future.
fn read(file: &Arc<LegacyFile>, path: PathBuf) -> impl Future<Output = ReadResult> {
    let (begin_side, end_side, cancel_side) =
        (Arc::clone(file), Arc::clone(file), Arc::clone(file));
    apm_tap::try_from_apm(
        move |cb| Ok(begin_side.begin_read(&path, cb.into(), State::none())),
        move |h| end_side.end_read(h),
    )
    .on_cancel(move |h| cancel_side.cancel(h))
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn text(result: &ReadResult) -> String {
    match result {
        Ok(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
        Err(e) => format!("error ({e})"),
    }
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let dir = std::env::temp_dir().join(format!("apm-tap-legacy-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (file, body) in [("a.txt", "alpha"), ("b.txt", "bravo"), ("c.txt", "charlie")] {
        std::fs::write(dir.join(file), body)?;
    }
    let fast = Arc::new(LegacyFile {
        cache: Mutex::default(),
        latency: Duration::from_millis(20),
        workers: Mutex::default(),
    });
    let slow = Arc::new(LegacyFile {
        cache: Mutex::default(),
        latency: Duration::from_secs(10),
        workers: Mutex::default(),
    });

    let first = read(&fast, dir.join("a.txt")).await;
    println!("uncached read (worker thread):  {}", text(&first));
    let handle = fast.begin_read(&dir.join("a.txt"), AsyncCallback::none(), State::none());
    println!(
        "cached read completed_synchronously = {}",
        handle.completed_synchronously()
    );
    println!(
        "cached read (inside begin):     {}",
        text(&read(&fast, dir.join("a.txt")).await)
    );
    drop(handle);

    let missing = read(&fast, dir.join("missing.txt")).await;
    println!("missing file:                   {}", text(&missing));

    match tokio::time::timeout(Duration::from_millis(50), read(&slow, dir.join("b.txt"))).await {
        Ok(result) => println!("timeout: finished first?! {}", text(&result)),
        Err(_) => println!("timeout: gave up after 50 ms; the legacy read was cancelled"),
    }

    tokio::select! {
        result = read(&fast, dir.join("b.txt")) => println!("select!: fast disk won:         {}", text(&result)),
        result = read(&slow, dir.join("c.txt")) => println!("select!: slow disk won?!        {}", text(&result)),
    }

    let all =
        futures::future::join_all(["a.txt", "b.txt", "c.txt"].map(|f| read(&fast, dir.join(f))))
            .await;
    println!(
        "join_all:                       {}",
        all.iter().map(text).collect::<Vec<_>>().join(", ")
    );

    fast.join_workers();
    slow.join_workers();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
