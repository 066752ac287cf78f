//! A cell that also holds the future completing it: the one allocation of a `begin`.
//!
//! `begin` polls the future once before it knows whether it must spawn it, and a polled
//! future cannot move, so the future lives in its operation's allocation, behind the
//! cell, as in a tokio task. A future that is ready at once costs that one allocation;
//! one that is not is spawned as a `TaskWriter`, a pointer.
//!
//! The writer alone touches the future. It drops it, in place, as soon as it has
//! finished (or on cancel, or when the executor drops the task), before it stores the
//! outcome, so that no handle can outlive the future's resources; the memory stays until
//! the last owner frees the allocation.

use std::future::Future;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::ptr::{self, NonNull};
use std::task::{Context, Poll};

use tokio::runtime::Id;

use super::word::TASK;
use super::{access, init, owners, Callback, Cell, Completion, Shared, Writer};
use crate::sync::UnsafeCell;
use crate::unwind::{catch, discard};
use crate::{Error, State};

/// What every `TaskCell` starts with, whatever its future: what `free` and
/// [`Shared::task_runtime`] read knowing only `T`. `#[repr(C)]`, so that a pointer to
/// the cell at its head is a pointer to it.
#[repr(C)]
struct TaskHeader<T> {
    cell: Cell<T>,
    /// Frees the whole `TaskCell<F>`: `free_task::<F>`.
    free: unsafe fn(NonNull<Cell<T>>),
    /// The current-thread runtime whose driver runs the task, if it was spawned on one:
    /// blocking on the operation from that thread would deadlock (rule 12). Written
    /// before the cell is shared, never changed.
    runtime: Option<Id>,
}

/// A task's cell and its future, in one allocation.
#[repr(C)]
struct TaskCell<F: Future> {
    header: TaskHeader<F::Output>,
    /// The writer's alone. Pinned: the allocation never moves, and the future is
    /// dropped in place.
    future: UnsafeCell<Option<F>>,
}

/// Makes a pending operation that `future` completes: the writer, which polls the
/// future, and the first handle. `runtime` is the current-thread runtime the task will
/// run on, if any.
pub(crate) fn new_task<F: Future>(
    future: F,
    callback: Option<Callback<F::Output>>,
    state: State,
    runtime: Option<Id>,
) -> (TaskWriter<F>, Shared<F::Output>) {
    let task = Box::into_raw(Box::new(MaybeUninit::<TaskCell<F>>::uninit())).cast::<TaskCell<F>>();
    // SAFETY: `task` is a fresh allocation for a `TaskCell<F>`; `init` writes the cell,
    // and each other field is written once through raw pointers, so that afterwards it
    // is fully initialised.
    unsafe {
        let header = ptr::addr_of_mut!((*task).header);
        init(ptr::addr_of_mut!((*header).cell), callback, state, TASK);
        ptr::addr_of_mut!((*header).free).write(free_task::<F>);
        ptr::addr_of_mut!((*header).runtime).write(runtime);
        ptr::addr_of_mut!((*task).future).write(UnsafeCell::new(Some(future)));
    }
    let task = NonNull::new(task).expect("`Box::into_raw` is never null");
    // The cell heads the `#[repr(C)]` allocation, and the pointer keeps the provenance
    // of all of it, for `free_task` and the writer's access to the future.
    let (writer, handle) = owners(task.cast::<Cell<F::Output>>());
    let writer = TaskWriter {
        writer: Some(writer),
        _future: PhantomData,
    };
    (writer, handle)
}

/// Frees the `TaskCell<F>` headed by the cell at `ptr`.
///
/// # Safety
///
/// As `super::free`, and `ptr` heads a `TaskCell<F>`.
unsafe fn free_task<F: Future>(ptr: NonNull<Cell<F::Output>>) {
    // SAFETY: made by `new_task` as a `Box<TaskCell<F>>`; the caller is the last owner.
    // The future was dropped by the writer, and `Cell`'s `Drop` is quiet, so this does
    // not unwind.
    drop(unsafe { Box::from_raw(ptr.cast::<TaskCell<F>>().as_ptr()) });
}

/// Frees a cell whose state has `TASK`.
///
/// # Safety
///
/// As `super::free`, and `ptr` heads a `TaskCell` (its `TASK` flag is set).
pub(super) unsafe fn free<T>(ptr: NonNull<Cell<T>>) {
    // SAFETY: the cell heads a `TaskCell`, whose `#[repr(C)]` header it starts; the
    // caller is the last owner, so nothing writes the header.
    let free = unsafe { ptr.cast::<TaskHeader<T>>().as_ref() }.free;
    // SAFETY: `free` is `free_task::<F>` for the `F` this cell was made with.
    unsafe { free(ptr) }
}

impl<T> Shared<T> {
    /// The current-thread runtime that runs this operation's task, if it has one.
    pub(crate) fn task_runtime(&self) -> Option<Id> {
        if !self.load().has(TASK) {
            return None;
        }
        // SAFETY: a `TASK` cell heads a `TaskHeader`; this handle keeps it alive, and
        // `runtime` never changes after the cell is shared.
        unsafe { self.ptr.cast::<TaskHeader<T>>().as_ref() }.runtime
    }
}

/// The writer of a task's cell, with the future it polls: what `begin` spawns.
pub(crate) struct TaskWriter<F: Future> {
    /// `None` once the outcome is stored; the future was dropped before that.
    writer: Option<Writer<F::Output>>,
    /// The future lives in the allocation: sent along with the writer, owned by it.
    _future: PhantomData<F>,
}

// The future is not stored inline: it stays pinned in the allocation however the
// `TaskWriter` moves.
impl<F: Future> Unpin for TaskWriter<F> {}

impl<F: Future> TaskWriter<F> {
    /// The future's slot, while the writer owns the cell.
    fn future(&self) -> Option<&UnsafeCell<Option<F>>> {
        let writer = self.writer.as_ref()?;
        // SAFETY: the writer's ownership keeps the allocation, a `TaskCell<F>` made by
        // `new_task`, alive.
        Some(unsafe { &writer.ptr.cast::<TaskCell<F>>().as_ref().future })
    }

    /// Whether the outcome is stored: nothing is left to do.
    pub(crate) fn is_done(&self) -> bool {
        self.writer.is_none()
    }

    /// The operation's address: tells one operation from another while it lives.
    pub(crate) fn id(&self) -> Option<usize> {
        Some(self.writer.as_ref()?.ptr.as_ptr() as usize)
    }

    /// Polls the future, catching a panic. Once it has finished (or panicked), drops it
    /// and returns its outcome, to store with [`complete`](Self::complete).
    ///
    /// # Panics
    ///
    /// If called after the future finished.
    pub(crate) fn poll_future(&mut self, cx: &mut Context<'_>) -> Poll<Result<F::Output, Error>> {
        let slot = self.future().expect("the task is polled after it finished");
        // SAFETY: the future's slot is the writer's alone, and `&mut self` excludes any
        // other access through it. The allocation never moves and the future is dropped
        // in place (`drop_future`), so pinning it is sound.
        let polled = unsafe {
            access(slot, |future| {
                let future = future
                    .as_mut()
                    .expect("the future is polled after it finished");
                let future = Pin::new_unchecked(future);
                catch(|| future.poll(cx))
            })
        };
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(value)) => Ok(value),
            Err(payload) => Err(Error::from_panic(payload)),
        };
        self.drop_future();
        Poll::Ready(outcome)
    }

    /// Drops the future in place, if it is still there. A panic in its `Drop` is
    /// discarded: the executor that drops a task is no place to raise it.
    pub(crate) fn drop_future(&mut self) {
        let Some(slot) = self.future() else {
            return;
        };
        // SAFETY: as in `poll_future`. After `drop_in_place` the slot is overwritten
        // without another drop, whether or not the future's `Drop` panicked.
        unsafe {
            access(slot, |future| {
                if let Some(inner) = future.as_mut() {
                    let inner: *mut F = inner;
                    if let Err(payload) = catch(|| ptr::drop_in_place(inner)) {
                        discard(payload);
                    }
                    ptr::write(future, None);
                }
            });
        }
    }

    /// Ready once a handle cancelled the operation; otherwise registers `cx`'s waker to
    /// be woken by a cancel.
    pub(crate) fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.writer.as_mut() {
            Some(writer) => writer.poll_cancelled(cx),
            None => Poll::Ready(()),
        }
    }

    /// Drops the future if it is still there, then stores `result` as `Writer::complete`
    /// does; the caller runs the returned wake-ups.
    ///
    /// # Panics
    ///
    /// If the outcome was stored already.
    pub(crate) fn complete(
        &mut self,
        result: Result<F::Output, Error>,
        synchronous: bool,
    ) -> Completion<F::Output> {
        self.drop_future();
        let writer = self.writer.take().expect("a task completes once");
        writer.complete(result, synchronous)
    }
}

impl<F: Future> Drop for TaskWriter<F> {
    /// An unfinished task: drops the future, then the writer, which completes the
    /// operation with `Abandoned(TaskDropped)`.
    fn drop(&mut self) {
        self.drop_future();
    }
}
