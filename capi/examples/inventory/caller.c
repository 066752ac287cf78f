/*
 * A C caller of the inventory service (inventory/ops.rs), through the header that
 * #[apm_tap::apm(c_abi)] declares (inventory.h). Built against libinventory_c.a and run
 * by tests/inventory.rs, and under valgrind by .ci/run. Prints what it did and exits 0
 * when every check holds.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "inventory.h"

#define STATUS(call)                                                                 \
  do {                                                                               \
    apm_tap_status got_ = (call);                                                    \
    if (got_ != APM_TAP_STATUS_OK) {                                                 \
      fprintf(stderr, "%s:%d: %s returned %s\n", __FILE__, __LINE__, #call,          \
              apm_tap_status_name(got_));                                            \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)

/* What the callback of stock_total saw, and a way to wait for it. */
struct total {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int calls;
  apm_tap_status status;
  uint64_t units;
};

/* Ends the operation inside its callback, as an APM caller does. */
static void on_total(apm_tap_op *op, void *state) {
  struct total *total = state;
  uint64_t units = 0;
  apm_tap_status status = stock_total_end(op, &units);
  pthread_mutex_lock(&total->lock);
  total->calls += 1;
  total->status = status;
  total->units = units;
  pthread_cond_broadcast(&total->cond);
  pthread_mutex_unlock(&total->lock);
}

int main(void) {
  /* Ready at once: End returns without blocking. */
  uint64_t added = 0, units = 0;
  apm_tap_op *op = stock_add_begin(7, 5, NULL, NULL);
  bool synchronously = false;
  STATUS(apm_tap_op_completed_synchronously(op, &synchronously));
  STATUS(stock_add_end(op, &added));
  if (!synchronously || added != 5) return 1;
  STATUS(stock_add_end(stock_add_begin(8, 3, NULL, NULL), &units));
  printf("stock_add: item 7 has %llu units (completed inside Begin), item 8 has %llu\n",
         (unsigned long long)added, (unsigned long long)units);

  /* Completes on a worker: wait, then End. */
  op = stock_get_begin(7, NULL, NULL);
  STATUS(apm_tap_op_wait(op, APM_TAP_WAIT_FOREVER));
  STATUS(stock_get_end(op, &units));
  if (units != 5) return 1;
  printf("stock_get: item 7 has %llu units\n", (unsigned long long)units);

  /* Completes on another thread, which runs the callback: End inside it. */
  struct total total = {.calls = 0};
  pthread_mutex_init(&total.lock, NULL);
  pthread_cond_init(&total.cond, NULL);
  stock_total_begin(10, on_total, &total);
  pthread_mutex_lock(&total.lock);
  while (total.calls == 0) pthread_cond_wait(&total.cond, &total.lock);
  pthread_mutex_unlock(&total.lock);
  if (total.status != APM_TAP_STATUS_OK || total.units != 8) return 1;
  printf("stock_total: %llu units over items 0..10, ended in the callback\n",
         (unsigned long long)total.units);
  pthread_mutex_destroy(&total.lock);
  pthread_cond_destroy(&total.cond);
  return 0;
}
