//! The inventory service as a static library for C (`libinventory_c.a`): the operations
//! of `inventory/ops.rs` and the shared `apm_tap_op_*` functions, which
//! `inventory/caller.c` calls through `inventory/inventory.h`.

#[path = "inventory/ops.rs"]
mod ops;
