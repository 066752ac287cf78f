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

use std::any::TypeId;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::{self, ManuallyDrop};
use std::pin::Pin;
use std::ptr::{self, NonNull};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::runtime::Id;

use super::spare;
use super::word::{CALLBACK, RAW, REF, TASK, TASK_WAKER};
use super::{access, init, owners, Callback, Cell, Completion, Shared, Writer};
use crate::sync::UnsafeCell;
use crate::track::Tracker;
use crate::unwind::{catch, discard, drop_quietly_if_some};
use crate::{Error, State};

/// What every `TaskCell` starts with, whatever its future: what `free` and
/// [`Shared::task_runtime`] read knowing only `T`. `#[repr(C)]`, so that a pointer to
/// the cell at its head is a pointer to it.
#[repr(C)]
struct TaskHeader<T> {
    cell: Cell<T>,
    /// The functions of this `TaskCell<F>`: how to free it, and how an erased handle
    /// ([`AnyShared`]) that knows only this field's address works on the cell.
    vtable: &'static TaskVtable,
    /// The current-thread runtime whose driver runs the task, if it was spawned on one:
    /// blocking on the operation from that thread would deadlock (rule 12). Written
    /// before the cell is shared, never changed.
    runtime: Option<Id>,
    /// The callback, handed over by `CALLBACK` as `More::callback` is in other cells.
    callback: UnsafeCell<Option<Callback<T>>>,
    /// The writer's waker, while the task waits to learn of a cancel: handed over by
    /// `TASK_WAKER` as `Cell::waker` is by `WAKER`, with the writer as its owner.
    task_waker: UnsafeCell<Option<Waker>>,
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
/// run on, if any. With `raw`, a raw pointer's handle is out too (`RAW`), before anything
/// could take it back.
pub(crate) fn new_task<F>(
    future: F,
    callback: Option<Callback<F::Output>>,
    state: State,
    runtime: Option<Id>,
    raw: bool,
    tracker: Tracker,
) -> (TaskWriter<F>, Shared<F::Output>)
where
    F: Future + 'static,
    F::Output: 'static,
{
    let task = spare::alloc::<TaskCell<F>>().as_ptr();
    // SAFETY: `task` is memory for a `TaskCell<F>` that nothing else uses; `init` writes the cell,
    // and each other field is written once through raw pointers, so that afterwards it
    // is fully initialised.
    unsafe {
        let header = ptr::addr_of_mut!((*task).header);
        let mut flags = TASK;
        if callback.is_some() {
            flags |= CALLBACK;
        }
        if raw {
            // Out as a raw pointer from the start, with a count of its own besides the
            // returned handle's (see `AnyShared::assume_raw`).
            flags |= RAW | REF;
        }
        init(
            ptr::addr_of_mut!((*header).cell),
            None,
            state,
            flags,
            tracker,
        );
        ptr::addr_of_mut!((*header).vtable).write(TaskVtableOf::<F>::VTABLE);
        ptr::addr_of_mut!((*header).runtime).write(runtime);
        ptr::addr_of_mut!((*header).callback).write(UnsafeCell::new(callback));
        ptr::addr_of_mut!((*header).task_waker).write(UnsafeCell::new(None));
        ptr::addr_of_mut!((*task).future).write(UnsafeCell::new(Some(future)));
    }
    let task = NonNull::new(task).expect("`spare::alloc` is never null");
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
unsafe fn free_task<F: Future>(ptr: NonNull<()>) {
    let ptr = ptr.cast::<TaskCell<F>>();
    // SAFETY: made by `new_task` with `spare::alloc`; the caller is the last owner.
    let task = unsafe { ptr.as_ref() };
    // A callback that never ran is dropped quietly, as `Cell`'s `Drop` drops the rest
    // of the cell; the writer dropped the future. So this does not unwind.
    // SAFETY: the last owner: nobody else can touch the slot.
    drop_quietly_if_some(unsafe { access(&task.header.callback, Option::take) });
    // SAFETY: as above.
    drop_quietly_if_some(unsafe { access(&task.header.task_waker, Option::take) });
    // SAFETY: as above; dropped once, then the memory is given back, holding nothing.
    unsafe {
        ptr::drop_in_place(ptr.as_ptr());
        spare::free(ptr);
    }
}

/// The writer's waker slot in the header of the task's cell at `ptr`.
///
/// # Safety
///
/// As `callback_slot`.
pub(super) unsafe fn task_waker_slot<'a, T: 'a>(
    ptr: NonNull<Cell<T>>,
) -> &'a UnsafeCell<Option<Waker>> {
    // SAFETY: as in `callback_slot`.
    unsafe { &ptr.cast::<TaskHeader<T>>().as_ref().task_waker }
}

/// The callback slot in the header of the task's cell at `ptr`.
///
/// # Safety
///
/// `ptr` heads a `TaskCell` (its `TASK` flag is set), and the caller owns the cell for
/// as long as it uses the slot.
pub(super) unsafe fn callback_slot<'a, T: 'a>(
    ptr: NonNull<Cell<T>>,
) -> &'a UnsafeCell<Option<Callback<T>>> {
    // SAFETY: the cell heads a `TaskCell`, whose `#[repr(C)]` header it starts, and
    // `ptr` keeps the provenance of the whole allocation; the caller's ownership keeps
    // it alive.
    unsafe { &ptr.cast::<TaskHeader<T>>().as_ref().callback }
}

/// Frees a cell whose state has `TASK`.
///
/// # Safety
///
/// As `super::free`, and `ptr` heads a `TaskCell` (its `TASK` flag is set).
pub(super) unsafe fn free<T>(ptr: NonNull<Cell<T>>) {
    // SAFETY: the cell heads a `TaskCell`, whose `#[repr(C)]` header it starts; the
    // caller is the last owner, so nothing writes the header.
    let free = unsafe { ptr.cast::<TaskHeader<T>>().as_ref() }.vtable.free;
    // SAFETY: `free` is `free_task::<F>` for the `F` this cell was made with.
    unsafe { free(ptr.cast()) }
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

/// What works on a task's cell knowing only the address of its header's `vtable` field
/// (a [`Field`]): one `'static` table per type of future. The field, unlike the cell,
/// is at an address whose contents do not depend on the output type, so that an erased
/// handle is one pointer.
pub(crate) struct TaskVtable {
    /// Frees the `TaskCell<F>` whose cell is at the pointer: `free_task::<F>`.
    free: unsafe fn(NonNull<()>),
    /// The `TypeId` of the output type.
    output: fn() -> TypeId,
    clone: unsafe fn(Field),
    drop: unsafe fn(Field),
    is_completed: unsafe fn(Field) -> bool,
    completed_synchronously: unsafe fn(Field) -> bool,
    state: unsafe fn(Field) -> NonNull<State>,
    cancel: unsafe fn(Field) -> bool,
    wait_until: unsafe fn(Field, Option<Instant>) -> bool,
    task_runtime: unsafe fn(Field) -> Option<Id>,
    /// Sets `RAW`; returns whether it was set already.
    set_raw: unsafe fn(Field) -> bool,
    /// Clears `RAW`; returns whether it was set.
    clear_raw: unsafe fn(Field) -> bool,
    /// Counts a new handle if `RAW` is set; returns whether it did.
    borrow_raw: unsafe fn(Field) -> bool,
}

/// The address of a task header's `vtable` field.
type Field = NonNull<&'static TaskVtable>;

struct TaskVtableOf<F>(PhantomData<F>);

impl<F> TaskVtableOf<F>
where
    F: Future + 'static,
    F::Output: 'static,
{
    const VTABLE: &'static TaskVtable = &TaskVtable {
        free: free_task::<F>,
        output: TypeId::of::<F::Output>,
        clone: erased::clone::<F::Output>,
        drop: erased::drop::<F::Output>,
        is_completed: erased::is_completed::<F::Output>,
        completed_synchronously: erased::completed_synchronously::<F::Output>,
        state: erased::state::<F::Output>,
        cancel: erased::cancel::<F::Output>,
        wait_until: erased::wait_until::<F::Output>,
        task_runtime: erased::task_runtime::<F::Output>,
        set_raw: erased::set_raw::<F::Output>,
        clear_raw: erased::clear_raw::<F::Output>,
        borrow_raw: erased::borrow_raw::<F::Output>,
    };
}

/// The typed functions behind a [`TaskVtable`]. Each one's safety contract: `field` is
/// the `vtable` field of a live task header whose output type is `T`, owned by the
/// caller as a handle (a count in the state word) for the whole call.
mod erased {
    use std::mem::{self, ManuallyDrop};
    use std::ptr::NonNull;
    use std::time::Instant;

    use tokio::runtime::Id;

    use super::{Field, Shared, TaskHeader, RAW};
    use crate::State;

    /// The caller's handle, borrowed: not dropped here.
    ///
    /// # Safety
    ///
    /// As the module says.
    pub(super) unsafe fn handle<T>(field: Field) -> ManuallyDrop<Shared<T>> {
        let offset = mem::offset_of!(TaskHeader<T>, vtable);
        // SAFETY: `field` was made from the cell's pointer (`Shared::into_any`), with
        // the provenance of the whole allocation, `offset` bytes after it.
        let cell = unsafe { NonNull::new_unchecked(field.as_ptr().cast::<u8>().sub(offset)) };
        ManuallyDrop::new(Shared {
            ptr: cell.cast(),
            _owns: std::marker::PhantomData,
        })
    }

    pub(super) unsafe fn clone<T>(field: Field) {
        // SAFETY: by the module's contract; the new count is the caller's to give up.
        mem::forget(Shared::clone(&*unsafe { handle::<T>(field) }));
    }

    pub(super) unsafe fn drop<T>(field: Field) {
        // SAFETY: by the module's contract; the caller gives its count up here.
        ManuallyDrop::into_inner(unsafe { handle::<T>(field) });
    }

    pub(super) unsafe fn is_completed<T>(field: Field) -> bool {
        // SAFETY: by the module's contract.
        unsafe { handle::<T>(field) }.is_completed()
    }

    pub(super) unsafe fn completed_synchronously<T>(field: Field) -> bool {
        // SAFETY: by the module's contract.
        unsafe { handle::<T>(field) }.completed_synchronously()
    }

    pub(super) unsafe fn state<T>(field: Field) -> NonNull<State> {
        // SAFETY: by the module's contract; the state lives as long as the cell.
        NonNull::from(unsafe { handle::<T>(field) }.state())
    }

    pub(super) unsafe fn cancel<T>(field: Field) -> bool {
        // SAFETY: by the module's contract.
        unsafe { handle::<T>(field) }.cancel()
    }

    pub(super) unsafe fn wait_until<T>(field: Field, deadline: Option<Instant>) -> bool {
        // SAFETY: by the module's contract.
        unsafe { handle::<T>(field) }.wait_until(deadline)
    }

    pub(super) unsafe fn task_runtime<T>(field: Field) -> Option<Id> {
        // SAFETY: by the module's contract.
        unsafe { handle::<T>(field) }.task_runtime()
    }

    pub(super) unsafe fn set_raw<T>(field: Field) -> bool {
        // SAFETY: by the module's contract.
        unsafe { handle::<T>(field) }.state.set(RAW).has(RAW)
    }

    pub(super) unsafe fn clear_raw<T>(field: Field) -> bool {
        // SAFETY: by the module's contract.
        unsafe { handle::<T>(field) }.state.clear(RAW).has(RAW)
    }

    pub(super) unsafe fn borrow_raw<T>(field: Field) -> bool {
        // SAFETY: by the module's contract.
        let cell = unsafe { handle::<T>(field) };
        let counted = cell.state.add_handle_if_raw();
        if counted && cell.load().handles() >= usize::MAX / super::REF / 2 {
            // As `Shared::new_from`: a count this high means handles are being leaked.
            std::process::abort();
        }
        counted
    }
}

/// A handle's ownership of a task's cell, with the output type erased: one pointer, to
/// the header's `vtable` field. What an [`AnyAsyncResult`](crate::AnyAsyncResult) is.
pub(crate) struct AnyShared {
    field: Field,
}

// SAFETY: made only from a `Shared<T>` with `T: Send` (`Shared::into_any`), which is
// `Send + Sync`, and it does no more than that handle could.
unsafe impl Send for AnyShared {}
// SAFETY: as above.
unsafe impl Sync for AnyShared {}

impl<T: Send + 'static> Shared<T> {
    /// Erases the output type of a task's cell; hands a cell that is not a task's back.
    pub(crate) fn into_any(self) -> Result<AnyShared, Shared<T>> {
        if !self.load().has(TASK) {
            return Err(self);
        }
        let header = self.ptr.cast::<TaskHeader<T>>().as_ptr();
        // SAFETY: a `TASK` cell heads a `TaskHeader<T>`, alive while this handle is;
        // the field's address keeps the pointer's provenance (no reference is made).
        let field = unsafe { NonNull::new_unchecked(ptr::addr_of_mut!((*header).vtable)) };
        // This handle's count passes to the erased one.
        mem::forget(self);
        Ok(AnyShared { field })
    }
}

impl<T> Shared<T> {
    /// Takes back the raw handle that `new_task` made with `raw`, if nobody did: for a
    /// Begin that unwinds before it could give the raw pointer out.
    pub(crate) fn give_up_raw(&self) {
        if self.state.clear(RAW).has(RAW) {
            // The raw pointer's count, given up through a handle of its own; this one
            // still owns the cell, so that this never frees it.
            drop(Shared {
                ptr: self.ptr,
                _owns: PhantomData,
            });
        }
    }
}

impl AnyShared {
    fn vtable(&self) -> &'static TaskVtable {
        // SAFETY: this handle keeps the header alive; the field is written before the
        // cell is shared and never changes.
        unsafe { self.field.as_ref() }
    }

    /// Whether the output type is `T`.
    pub(crate) fn is<T: 'static>(&self) -> bool {
        (self.vtable().output)() == TypeId::of::<T>()
    }

    /// The typed handle, if the output type is `T`.
    pub(crate) fn downcast<T: 'static>(self) -> Result<Shared<T>, AnyShared> {
        if !self.is::<T>() {
            return Err(self);
        }
        // SAFETY: the output type is `T`, so the header is a `TaskHeader<T>`; this
        // handle's count passes to the typed one.
        let handle = unsafe { erased::handle::<T>(self.field) };
        mem::forget(self);
        Ok(ManuallyDrop::into_inner(handle))
    }

    pub(crate) fn is_completed(&self) -> bool {
        // SAFETY: the vtable is the cell's, and this handle owns the cell.
        unsafe { (self.vtable().is_completed)(self.field) }
    }

    pub(crate) fn completed_synchronously(&self) -> bool {
        // SAFETY: as in `is_completed`.
        unsafe { (self.vtable().completed_synchronously)(self.field) }
    }

    pub(crate) fn state(&self) -> &State {
        // SAFETY: as in `is_completed`; the state lives as long as the cell, which this
        // handle keeps for the borrow.
        unsafe { (self.vtable().state)(self.field).as_ref() }
    }

    pub(crate) fn cancel(&self) -> bool {
        // SAFETY: as in `is_completed`.
        unsafe { (self.vtable().cancel)(self.field) }
    }

    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> bool {
        // SAFETY: as in `is_completed`.
        unsafe { (self.vtable().wait_until)(self.field, deadline) }
    }

    pub(crate) fn task_runtime(&self) -> Option<Id> {
        // SAFETY: as in `is_completed`.
        unsafe { (self.vtable().task_runtime)(self.field) }
    }

    /// Whether `self` and `other` are handles of the same operation.
    pub(crate) fn ptr_eq(&self, other: &AnyShared) -> bool {
        self.field == other.field
    }

    /// The address of the operation's raw handle (whether one is out or not).
    pub(crate) fn as_ptr(&self) -> NonNull<()> {
        self.field.cast()
    }

    /// Gives up this handle as the operation's raw pointer; hands it back if another
    /// raw handle is out (`RAW` is set).
    pub(crate) fn into_raw(self) -> Result<NonNull<()>, AnyShared> {
        // SAFETY: as in `is_completed`.
        if unsafe { (self.vtable().set_raw)(self.field) } {
            return Err(self);
        }
        let ptr = self.as_ptr();
        // This handle's count passes to the raw pointer.
        mem::forget(self);
        Ok(ptr)
    }

    /// Gives up this handle's count, leaving the raw handle that `new_task` made with
    /// `raw` (and its own count) as the operation's pointer.
    pub(crate) fn assume_raw(self) -> NonNull<()> {
        let ptr = self.as_ptr();
        drop(self);
        ptr
    }

    /// Takes back the raw handle, if it is still out (`RAW` set): `None` if it was taken
    /// back already.
    ///
    /// # Safety
    ///
    /// `ptr` came from `into_raw` or `assume_raw`, and the operation is alive: a handle
    /// (raw or not) still owns it.
    pub(crate) unsafe fn from_raw(ptr: NonNull<()>) -> Option<AnyShared> {
        let field = ptr.cast::<&'static TaskVtable>();
        // SAFETY: by this function's contract, the header is alive; its `vtable` field
        // never changes.
        let vtable = unsafe { *field.as_ref() };
        // SAFETY: as above; if `RAW` was set, its count passes to the returned handle,
        // which owns the cell from here on.
        unsafe { (vtable.clear_raw)(field) }.then(|| AnyShared { field })
    }

    /// A handle of its own (a new count) for a user of the raw handle, if the raw handle
    /// is still out: it keeps the operation alive even if the raw handle is taken back
    /// and dropped meanwhile.
    ///
    /// # Safety
    ///
    /// As `from_raw`.
    pub(crate) unsafe fn borrow_raw(ptr: NonNull<()>) -> Option<AnyShared> {
        let field = ptr.cast::<&'static TaskVtable>();
        // SAFETY: as in `from_raw`.
        let vtable = unsafe { *field.as_ref() };
        // SAFETY: as in `from_raw`; the count added is the returned handle's.
        let counted = unsafe { (vtable.borrow_raw)(field) };
        counted.then(|| AnyShared { field })
    }
}

impl Clone for AnyShared {
    fn clone(&self) -> Self {
        // SAFETY: as in `is_completed`; the new count is the clone's.
        unsafe { (self.vtable().clone)(self.field) };
        AnyShared { field: self.field }
    }
}

impl Drop for AnyShared {
    fn drop(&mut self) {
        // SAFETY: as in `is_completed`; this handle gives its count up.
        unsafe { (self.vtable().drop)(self.field) }
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
        let Some(writer) = self.writer.as_ref() else {
            return Poll::Ready(());
        };
        let state = writer.load();
        if state.is_complete() {
            return Poll::Ready(());
        }
        if state.handles() == 0 {
            // Nobody is left to cancel: a handle comes only from another handle, or
            // with the callback once the task has finished. Nothing to watch for, and
            // no waker to clone on every poll of a task whose caller let go.
            return Poll::Pending;
        }
        // SAFETY: a task's cell, which the writer's ownership keeps alive while the
        // slot is used; the writer owns the slot under `TASK_WAKER`'s rules.
        let slot = unsafe { task_waker_slot(writer.ptr) };
        writer.register_inline(slot, TASK_WAKER, 0, cx.waker())
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

/// A spawned task with its type erased: two words, the writer's pointer and the
/// functions that poll and drop it, so that a `Spawner` takes it without boxing it (as
/// async-task's `Runnable` does), and a tokio `Handle` stores it inline in its own task.
pub(crate) struct RawTask {
    /// The writer's pointer until it is done, then `None`.
    ptr: Option<NonNull<()>>,
    vtable: &'static Vtable,
}

/// How to poll and drop the writer of one type of task, known only by its pointer.
struct Vtable {
    poll: unsafe fn(&mut Option<NonNull<()>>, &mut Context<'_>) -> Poll<()>,
    drop: unsafe fn(NonNull<()>),
}

/// What a spawned task does with its writer: polls it, and what happens when the
/// executor drops it unfinished (then the writer itself is dropped, which abandons the
/// operation).
pub(crate) trait Driver: 'static {
    fn poll<F: Future + 'static>(task: &mut TaskWriter<F>, cx: &mut Context<'_>) -> Poll<()>;

    fn drop<F: Future + 'static>(task: &mut TaskWriter<F>);
}

struct VtableOf<D, F>(PhantomData<(D, F)>);

impl<D: Driver, F: Future + 'static> VtableOf<D, F> {
    const VTABLE: Vtable = Vtable {
        poll: poll_raw::<D, F>,
        drop: drop_raw::<D, F>,
    };
}

/// Polls the writer at `slot`, and empties `slot` once the writer is done.
///
/// # Safety
///
/// `slot` holds the pointer of a `TaskWriter<F>` from `into_raw`, owned by the caller.
unsafe fn poll_raw<D: Driver, F: Future + 'static>(
    slot: &mut Option<NonNull<()>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    /// Keeps the pointer in `slot` while the writer is unfinished, even if the poll
    /// unwinds, and forgets it once the writer is done (nothing is left to drop then).
    struct Guard<'a, F: Future> {
        slot: &'a mut Option<NonNull<()>>,
        task: ManuallyDrop<TaskWriter<F>>,
    }

    impl<F: Future> Drop for Guard<'_, F> {
        fn drop(&mut self) {
            if self.task.is_done() {
                *self.slot = None;
            }
        }
    }

    let ptr = slot.expect("a done task is not polled");
    let mut guard = Guard {
        slot,
        // SAFETY: by this function's contract; the pointer stays the caller's.
        task: ManuallyDrop::new(unsafe { TaskWriter::<F>::from_raw(ptr) }),
    };
    D::poll(&mut guard.task, cx)
}

/// Drops an unfinished writer, after `D::drop`.
///
/// # Safety
///
/// `ptr` is a `TaskWriter<F>`'s from `into_raw`; the caller gives it up.
unsafe fn drop_raw<D: Driver, F: Future + 'static>(ptr: NonNull<()>) {
    // SAFETY: by this function's contract.
    let mut task = unsafe { TaskWriter::<F>::from_raw(ptr) };
    D::drop(&mut task);
}

impl RawTask {
    /// Erases `task`, to be polled and dropped as `D` says.
    ///
    /// # Panics
    ///
    /// If the task is done.
    pub(crate) fn new<D: Driver, F>(task: TaskWriter<F>) -> RawTask
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        RawTask {
            ptr: Some(task.into_raw()),
            vtable: &VtableOf::<D, F>::VTABLE,
        }
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.ptr.is_none() {
            return Poll::Ready(());
        }
        // SAFETY: `ptr` is the unfinished writer's, owned by this task, and the vtable
        // is its type's (`new`).
        unsafe { (self.vtable.poll)(&mut self.ptr, cx) }
    }
}

impl Drop for RawTask {
    fn drop(&mut self) {
        if let Some(ptr) = self.ptr.take() {
            // SAFETY: as in `poll`; the pointer is given up here.
            unsafe { (self.vtable.drop)(ptr) }
        }
    }
}

// SAFETY: the erased writer and future are `Send` (`new`'s bounds), and a `RawTask`
// only moves them to the thread that polls or drops it.
unsafe impl Send for RawTask {}

impl<F: Future> TaskWriter<F> {
    /// Gives up the unfinished writer as its cell's pointer.
    fn into_raw(self) -> NonNull<()> {
        let ptr = self.writer.as_ref().expect("an unfinished task").ptr;
        // Its ownership passes to the pointer.
        mem::forget(self);
        ptr.cast()
    }

    /// Rebuilds the writer that `into_raw` gave up.
    ///
    /// # Safety
    ///
    /// `ptr` came from `into_raw` of a `TaskWriter<F>`, and the caller owns it.
    unsafe fn from_raw(ptr: NonNull<()>) -> Self {
        TaskWriter {
            writer: Some(Writer {
                ptr: ptr.cast(),
                _owns: PhantomData,
            }),
            _future: PhantomData,
        }
    }
}
