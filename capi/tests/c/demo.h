/*
 * The operations of examples/demo_ops.rs, declared by hand: cbindgen does not expand
 * the `export!` macro that defines them. Each pair follows apm_tap.h's contract.
 */
#ifndef DEMO_OPS_H
#define DEMO_OPS_H

#include <stdint.h>

#include "apm_tap.h"

/* a + b: ready at once, so it completes inside Begin. */
apm_tap_op *demo_add_begin(int32_t a, int32_t b, apm_tap_callback callback, void *state);
apm_tap_status demo_add_end(apm_tap_op *op, int32_t *out);

/* value, after yielding once: completes on a worker of apm-tap's runtime. */
apm_tap_op *demo_yield_begin(int64_t value, apm_tap_callback callback, void *state);
apm_tap_status demo_yield_end(apm_tap_op *op, int64_t *out);

/* value, once gate `gate` is opened. */
apm_tap_op *demo_gated_begin(uint32_t gate, int32_t value, apm_tap_callback callback,
                             void *state);
apm_tap_status demo_gated_end(apm_tap_op *op, int32_t *out);

/* Panics on its first poll, inside Begin: ends as APM_TAP_STATUS_PANICKED. */
apm_tap_op *demo_panic_begin(int32_t unused, apm_tap_callback callback, void *state);
apm_tap_status demo_panic_end(apm_tap_op *op, int32_t *out);

uint32_t demo_gate_new(void);
void demo_gate_open(uint32_t gate);
void demo_gates_free(void);

#endif /* DEMO_OPS_H */
