//! Round trips: `from_apm` over a Begin/End pair made with `begin` behaves like the
//! original future, and `begin` over a `from_apm` future behaves like the original pair.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};

use apm_tap::{Abandonment, AsyncCallback, AsyncResult, Error, State};
use futures::FutureExt;
use tokio::sync::oneshot;

/// An async fn exposed as Begin/End with `begin`, then awaited through `from_apm`.
fn round_trip<F>(future: F) -> impl std::future::Future<Output = Result<F::Output, Error>>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let future = apm_tap::from_apm(
        move |cb| apm_tap::Builder::new().callback(cb).begin(future),
        |handle: AsyncResult<F::Output>| handle.end(),
    );
    future.map(|outer| outer.and_then(|inner| inner))
}

#[test]
fn from_apm_over_begin_keeps_value_and_error() {
    common::current_thread().block_on(async {
        assert_eq!(round_trip(async { 1 + 1 }).await, Ok(2));
        assert_eq!(
            round_trip(async {
                tokio::task::yield_now().await;
                Err::<u8, String>("refused".into())
            })
            .await,
            Ok(Err("refused".to_owned()))
        );
    });
}

#[test]
fn from_apm_over_begin_reports_panic() {
    let runtime = common::multi_thread(1, "round-trip");
    let outcome = runtime.block_on(round_trip(async {
        tokio::task::yield_now().await;
        panic!("deep inside")
    }));
    assert_eq!(
        common::panic_message(outcome),
        Ok(Some("deep inside".to_owned()))
    );
}

/// Dropping the outer future cancels the inner operation through `on_cancel`; `end`
/// then runs once and sees `Cancelled`, and the inner future is dropped.
#[test]
fn from_apm_over_begin_cancels() {
    let (end_tx, end_rx) = mpsc::channel();
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    struct OnDrop(Option<oneshot::Sender<()>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.take().unwrap().send(()).unwrap();
        }
    }
    let guard = OnDrop(Some(dropped_tx));
    let mut future = Box::pin(
        apm_tap::from_apm(
            move |cb| {
                apm_tap::Builder::new().callback(cb).begin(async move {
                    let _guard = guard;
                    std::future::pending::<u8>().await
                })
            },
            move |handle: AsyncResult<u8>| end_tx.send(handle.end()).unwrap(),
        )
        .on_cancel(AsyncResult::cancel),
    );
    assert!((&mut future).now_or_never().is_none());
    drop(future);
    assert_eq!(end_rx.recv().unwrap(), Err(Error::Cancelled));
    assert!(end_rx.recv().is_err(), "end ran twice");
    futures::executor::block_on(dropped_rx).unwrap();
}

/// A legacy pair, wrapped with `from_apm` and exposed again with `begin`: value, `end`
/// once, callback once, state.
#[test]
fn begin_over_from_apm_behaves_like_the_pair() {
    fn legacy_begin(x: u32, callback: AsyncCallback<u32>, state: State) -> AsyncResult<u32> {
        let (completer, handle) = apm_tap::Builder::new()
            .callback(callback)
            .state(state)
            .completer();
        std::thread::spawn(move || completer.complete(x + 1).unwrap());
        handle
    }
    let ends = Arc::new(AtomicUsize::new(0));
    let e = Arc::clone(&ends);
    let wrapped = apm_tap::from_apm(
        |cb| legacy_begin(41, cb.into(), State::none()),
        move |h: AsyncResult<u32>| {
            e.fetch_add(1, SeqCst);
            h.end()
        },
    );
    let (tx, rx) = mpsc::channel();
    let handle = apm_tap::Builder::new()
        .callback(move |h: AsyncResult<_>| {
            tx.send(*h.state().downcast_ref::<u8>().unwrap()).unwrap()
        })
        .state(State::new(7_u8))
        .begin(wrapped);
    assert_eq!(handle.end(), Ok(Ok(Ok(42))));
    assert_eq!(rx.recv().unwrap(), 7);
    assert_eq!(ends.load(SeqCst), 1);

    // Abandoned in the legacy API: its callback still runs, so `end` runs and its
    // `Abandoned` comes out of the rebuilt pair as the operation's own result.
    let abandoned = apm_tap::from_apm(
        |cb| apm_tap::Builder::new().callback(cb).completer().1,
        |h: AsyncResult<u32>| h.end(),
    );
    let handle = apm_tap::begin(abandoned);
    assert!(handle.completed_synchronously());
    assert_eq!(
        handle.end(),
        Ok(Ok(Err(Error::Abandoned(Abandonment::CompleterDropped))))
    );
}

/// `begin` over a synchronously completing legacy pair completes synchronously too.
#[test]
fn begin_over_synchronous_pair_is_synchronous() {
    let wrapped = apm_tap::from_apm(
        |cb| {
            let (completer, handle) = apm_tap::Builder::new().callback(cb).completer();
            completer.complete_synchronously(5).unwrap();
            handle
        },
        |h: AsyncResult<i32>| h.end(),
    );
    let handle = apm_tap::begin(wrapped);
    assert!(handle.completed_synchronously());
    assert_eq!(handle.end().map(apm_tap::flatten), Ok(Ok(5)));
}
