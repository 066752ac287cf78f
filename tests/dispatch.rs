//! Where callbacks run: each `Dispatch` policy runs the Begin-side callback on the
//! thread it says, after the result is stored, and a callback that re-enters its
//! handle (end, cancel) or begins another operation completes.

mod common;

use std::sync::mpsc;
use std::thread::{self, ThreadId};

use apm_tap::{AsyncResult, Builder, CallbackThread, Dispatch, Error, Task};
use std::time::Duration;

/// What a callback saw: its thread's id and name, `end`'s result, and the result of a
/// nested operation begun inside it with the same policy.
#[derive(Debug)]
struct Seen {
    thread: ThreadId,
    name: Option<String>,
    ended: Result<u32, Error>,
    nested: Result<u32, Error>,
}

/// Begins a ready operation whose callback, under `dispatch`, ends its handle, cancels
/// it (too late: no effect), and begins a second operation with the same policy, which
/// completes (its own callback is posted too, and runs after this one: a callback must
/// not wait for it on a one-thread target).
fn run_under(dispatch: Dispatch) -> (bool, Seen) {
    let (tx, rx) = mpsc::channel();
    let (nested_tx, nested_rx) = mpsc::channel();
    let again = dispatch.clone();
    let handle = Builder::new()
        .dispatch(dispatch)
        .callback(move |h: AsyncResult<u32>| {
            let current = thread::current();
            let ended = h.clone().end();
            h.cancel();
            let nested = Builder::new()
                .dispatch(again)
                .callback(move |n: AsyncResult<u32>| nested_tx.send(n.is_completed()).unwrap())
                .begin(async { 2 });
            tx.send(Seen {
                thread: current.id(),
                name: current.name().map(str::to_owned),
                ended,
                nested: nested.end(),
            })
            .unwrap();
        })
        .begin(async { 1 });
    let seen = rx.recv().unwrap();
    assert_eq!(nested_rx.recv(), Ok(true), "the nested callback ran too");
    (handle.completed_synchronously(), seen)
}

#[test]
fn inline_runs_the_callback_inside_begin_on_the_calling_thread() {
    let (synchronous, seen) = run_under(Dispatch::inline());
    assert!(synchronous);
    assert_eq!(seen.thread, thread::current().id());
    assert_eq!((seen.ended, seen.nested), (Ok(1), Ok(2)));
}

#[test]
fn tokio_posts_the_callback_to_the_runtime() {
    let runtime = common::multi_thread(1, "dispatch-tokio");
    let (synchronous, seen) = run_under(Dispatch::tokio(runtime.handle().clone()));
    assert!(
        synchronous,
        "it completed inside begin; only the callback moved"
    );
    assert_eq!(seen.name.as_deref(), Some("dispatch-tokio"));
    assert_eq!((seen.ended, seen.nested), (Ok(1), Ok(2)));
}

#[test]
fn spawner_posts_the_callback_to_its_executor() {
    let pool = futures::executor::ThreadPool::builder()
        .pool_size(1)
        .name_prefix("dispatch-pool-")
        .create()
        .unwrap();
    let (_, seen) = run_under(Dispatch::spawner(move |task| pool.spawn_ok(task)));
    assert!(seen.name.unwrap().starts_with("dispatch-pool-"));
    assert_eq!((seen.ended, seen.nested), (Ok(1), Ok(2)));
}

#[test]
fn blocking_runs_the_callback_on_the_blocking_pool() {
    let runtime = common::multi_thread(1, "dispatch-blocking");
    // Posted from inside the runtime: its blocking pool (same thread names).
    let (_, seen) = runtime.block_on(async { run_under(Dispatch::blocking()) });
    assert_eq!(seen.name.as_deref(), Some("dispatch-blocking"));
    assert_ne!(seen.thread, thread::current().id());
    assert_eq!((seen.ended, seen.nested), (Ok(1), Ok(2)));
}

#[test]
fn thread_runs_every_callback_on_its_one_thread_in_order() {
    let ui = CallbackThread::spawn("dispatch-ui").unwrap();
    let (_, seen) = run_under(Dispatch::thread(&ui));
    assert_eq!(seen.thread, ui.id());
    assert_eq!(seen.name.as_deref(), Some("dispatch-ui"));
    assert_eq!((seen.ended, seen.nested), (Ok(1), Ok(2)));

    let (tx, rx) = mpsc::channel();
    for i in 0..100_u32 {
        let tx = tx.clone();
        drop(
            Builder::new()
                .dispatch(Dispatch::thread(&ui))
                .callback(move |h: AsyncResult<u32>| tx.send(h.end().unwrap()).unwrap())
                .begin(async move { i }),
        );
    }
    assert_eq!(
        rx.iter().take(100).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
}

#[test]
fn a_posted_callback_never_runs_inside_begin() {
    let ui = CallbackThread::spawn("dispatch-busy").unwrap();
    // Keep the thread busy until told.
    let (release, released) = mpsc::channel::<()>();
    Dispatch::thread(&ui).run(move || released.recv().unwrap());
    let (tx, rx) = mpsc::channel();
    let handle = Builder::new()
        .dispatch(Dispatch::thread(&ui))
        .callback(move |_: AsyncResult<()>| tx.send(()).unwrap())
        .begin(async {});
    assert!(handle.completed_synchronously());
    assert!(
        handle.is_completed(),
        "the result is stored before the callback is posted"
    );
    assert!(rx.try_recv().is_err(), "posted, not run inside begin");
    release.send(()).unwrap();
    rx.recv().unwrap();
}

#[test]
fn a_completer_callback_is_posted_too() {
    let ui = CallbackThread::spawn("dispatch-completer").unwrap();
    let (tx, rx) = mpsc::channel();
    let (completer, _handle) = Builder::new()
        .callback(move |h: AsyncResult<u8>| tx.send((thread::current().id(), h.end())).unwrap())
        .dispatch(Dispatch::thread(&ui))
        .completer();
    completer.complete(3).unwrap();
    assert_eq!(rx.recv().unwrap(), (ui.id(), Ok(3)));
}

#[test]
fn a_panicking_posted_callback_is_discarded_and_the_thread_runs_on() {
    let ui = CallbackThread::spawn("dispatch-panic").unwrap();
    drop(
        Builder::new()
            .dispatch(Dispatch::thread(&ui))
            .callback(|_: AsyncResult<()>| panic!("callback failed"))
            .begin(async {}),
    );
    let (tx, rx) = mpsc::channel();
    Dispatch::thread(&ui).run(move || tx.send(()).unwrap());
    rx.recv().unwrap();
}

#[test]
fn jobs_posted_before_the_last_handle_went_still_run() {
    let ui = CallbackThread::spawn("dispatch-last").unwrap();
    let dispatch = Dispatch::thread(&ui);
    let (tx, rx) = mpsc::channel();
    for i in 0..3 {
        let tx = tx.clone();
        dispatch.run(move || tx.send(i).unwrap());
    }
    drop((ui, dispatch, tx));
    // The thread runs what was posted, then ends (the channel closes with it).
    assert_eq!(rx.iter().collect::<Vec<_>>(), [0, 1, 2]);
}

#[test]
fn the_last_dispatch_given_wins_and_inline_resets() {
    let ui = CallbackThread::spawn("dispatch-reset").unwrap();
    let here = thread::current().id();
    let (tx, rx) = mpsc::channel();
    drop(
        Builder::new()
            .dispatch(Dispatch::thread(&ui))
            .dispatch(Dispatch::inline())
            .callback(move |_: AsyncResult<()>| tx.send(thread::current().id()).unwrap())
            .begin(async {}),
    );
    assert_eq!(rx.try_recv(), Ok(here), "inline again: ran inside begin");
}

#[test]
fn a_callback_posted_to_a_runtime_that_shuts_down_still_runs_once() {
    let runtime = common::multi_thread(1, "dispatch-shutdown");
    let (tx, rx) = mpsc::channel();
    let _handle = Builder::new()
        .dispatch(Dispatch::tokio(runtime.handle().clone()))
        .callback(move |h: AsyncResult<u32>| tx.send(h.end()).unwrap())
        .spawner(&runtime)
        .begin(std::future::pending::<u32>());
    drop(runtime);
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(Err(Error::Abandoned(_)))
    ));
    assert!(rx.try_recv().is_err(), "once");
}

#[test]
fn a_callback_posted_where_it_cannot_run_runs_where_it_is_dropped() {
    let gone = common::multi_thread(1, "dispatch-gone");
    let dead = gone.handle().clone();
    drop(gone);
    let refuses = Dispatch::spawner(|task: Task| drop(task));
    let panics = Dispatch::spawner(|_: Task| panic!("spawner failed"));
    for dispatch in [Dispatch::tokio(dead), refuses, panics] {
        let (tx, rx) = mpsc::channel();
        let (completer, _handle) = Builder::new()
            .dispatch(dispatch)
            .callback(move |h: AsyncResult<u32>| tx.send(h.end()).unwrap())
            .completer();
        completer.complete(4).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(4)));
    }
}
