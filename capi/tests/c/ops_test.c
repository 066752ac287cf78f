/*
 * A C program driving Rust futures through apm_tap.h: what a C caller of a Rust
 * library does. Compiled and run by tests/c_program.rs, and under valgrind by .ci/run.
 * Exits 0 and prints one line per check group when every check holds.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "apm_tap.h"
#include "demo.h"

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);       \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)

#define STATUS(call, expected)                                                       \
  do {                                                                               \
    apm_tap_status got_ = (call);                                                    \
    if (got_ != (expected)) {                                                        \
      fprintf(stderr, "%s:%d: %s returned %s, expected %s\n", __FILE__, __LINE__,   \
              #call, apm_tap_status_name(got_), apm_tap_status_name(expected));      \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)

/* Set on this thread while it is inside a Begin call. */
static _Thread_local bool in_begin;

/* What one operation's callback saw, and a way to wait for it. */
struct seen {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int calls;
  pthread_t thread;
  bool inside_begin;
  bool synchronously;
  void *state;
};

static void seen_init(struct seen *s) {
  pthread_mutex_init(&s->lock, NULL);
  pthread_cond_init(&s->cond, NULL);
  s->calls = 0;
}

static void seen_destroy(struct seen *s) {
  pthread_mutex_destroy(&s->lock);
  pthread_cond_destroy(&s->cond);
}

static void seen_wait(struct seen *s) {
  pthread_mutex_lock(&s->lock);
  while (s->calls == 0) pthread_cond_wait(&s->cond, &s->lock);
  pthread_mutex_unlock(&s->lock);
}

/* A callback whose state is a `struct seen`: records what it saw. */
static void record(apm_tap_op *op, void *state) {
  struct seen *s = state;
  bool synchronously = false;
  void *given = NULL;
  STATUS(apm_tap_op_completed_synchronously(op, &synchronously), APM_TAP_STATUS_OK);
  STATUS(apm_tap_op_state(op, &given), APM_TAP_STATUS_OK);
  pthread_mutex_lock(&s->lock);
  s->calls += 1;
  s->thread = pthread_self();
  s->inside_begin = in_begin;
  s->synchronously = synchronously;
  s->state = given;
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

static void synchronous_completion(void) {
  struct seen s;
  seen_init(&s);
  in_begin = true;
  apm_tap_op *op = demo_add_begin(2, 3, record, &s);
  in_begin = false;
  CHECK(op != NULL);
  CHECK(s.calls == 1);
  CHECK(pthread_equal(s.thread, pthread_self()));
  CHECK(s.inside_begin && s.synchronously && s.state == &s);
  int32_t sum = 0;
  STATUS(demo_add_end(op, &sum), APM_TAP_STATUS_OK);
  CHECK(sum == 5);
  seen_destroy(&s);
  puts("synchronous completion: callback inside Begin, on this thread");
}

static void asynchronous_completion(void) {
  struct seen s;
  seen_init(&s);
  in_begin = true;
  apm_tap_op *op = demo_yield_begin(40, record, &s);
  in_begin = false;
  seen_wait(&s);
  CHECK(s.calls == 1);
  CHECK(!pthread_equal(s.thread, pthread_self()));
  CHECK(!s.inside_begin && !s.synchronously);
  int64_t out = 0;
  STATUS(demo_yield_end(op, &out), APM_TAP_STATUS_OK);
  CHECK(out == 40);
  seen_destroy(&s);
  puts("asynchronous completion: callback on a worker, never inside Begin");
}

/* Ends its operation inside the callback, then tries the consumed reference again. */
struct ended {
  struct seen seen;
  apm_tap_status first, second, released, queried;
  int64_t value;
};

static void end_inside(apm_tap_op *op, void *state) {
  struct ended *e = state;
  bool completed = false;
  e->first = demo_yield_end(op, &e->value);
  e->second = demo_yield_end(op, &e->value);
  e->released = apm_tap_op_release(op);
  e->queried = apm_tap_op_is_completed(op, &completed);
  CHECK(completed);
  pthread_mutex_lock(&e->seen.lock);
  e->seen.calls += 1;
  pthread_cond_broadcast(&e->seen.cond);
  pthread_mutex_unlock(&e->seen.lock);
}

static void end_inside_the_callback_and_end_twice(void) {
  struct ended e;
  seen_init(&e.seen);
  /* Begin's pointer belongs to the callback, which consumes it: not used here. */
  (void)demo_yield_begin(7, end_inside, &e);
  seen_wait(&e.seen);
  STATUS(e.first, APM_TAP_STATUS_OK);
  CHECK(e.value == 7);
  STATUS(e.second, APM_TAP_STATUS_ALREADY_ENDED);
  STATUS(e.released, APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(e.queried, APM_TAP_STATUS_OK);
  seen_destroy(&e.seen);
  puts("end inside the callback; a second end is APM_TAP_STATUS_ALREADY_ENDED");
}

/* Calls back into the library from a callback: begin and end another operation, begin
 * and release a third, cancel and wait on its own, then end it. */
static void reenter(apm_tap_op *op, void *state) {
  struct ended *e = state;
  int32_t sum = 0;
  apm_tap_op *inner = demo_add_begin(20, 1, NULL, NULL);
  STATUS(demo_add_end(inner, &sum), APM_TAP_STATUS_OK);
  CHECK(sum == 21);
  STATUS(apm_tap_op_release(demo_yield_begin(5, NULL, NULL)), APM_TAP_STATUS_OK);
  STATUS(apm_tap_op_cancel(op), APM_TAP_STATUS_OK);
  STATUS(apm_tap_op_wait(op, APM_TAP_WAIT_FOREVER), APM_TAP_STATUS_OK);
  e->first = demo_yield_end(op, &e->value);
  pthread_mutex_lock(&e->seen.lock);
  e->seen.calls += 1;
  pthread_cond_broadcast(&e->seen.cond);
  pthread_mutex_unlock(&e->seen.lock);
}

static void callbacks_that_call_back_in(void) {
  struct ended e;
  seen_init(&e.seen);
  (void)demo_yield_begin(9, reenter, &e);
  seen_wait(&e.seen);
  STATUS(e.first, APM_TAP_STATUS_OK);
  CHECK(e.value == 9);
  seen_destroy(&e.seen);
  puts("a callback that begins, ends, releases, cancels and waits: no deadlock");
}

static void wait_with_timeout(void) {
  uint32_t gate = demo_gate_new();
  apm_tap_op *op = demo_gated_begin(gate, 3, NULL, NULL);
  bool completed = true;
  STATUS(apm_tap_op_wait(op, 0), APM_TAP_STATUS_NOT_COMPLETE);
  STATUS(apm_tap_op_wait(op, 5), APM_TAP_STATUS_NOT_COMPLETE);
  STATUS(apm_tap_op_is_completed(op, &completed), APM_TAP_STATUS_OK);
  CHECK(!completed);
  demo_gate_open(gate);
  STATUS(apm_tap_op_wait(op, APM_TAP_WAIT_FOREVER), APM_TAP_STATUS_OK);
  int32_t out = 0;
  STATUS(demo_gated_end(op, &out), APM_TAP_STATUS_OK);
  CHECK(out == 3);
  puts("wait: APM_TAP_STATUS_NOT_COMPLETE on timeout, APM_TAP_STATUS_OK once complete");
}

/* Cancel racing completion: both start together; exactly one outcome, one callback. */
struct race {
  pthread_barrier_t start;
  uint32_t gate;
  apm_tap_op *op;
};

static void *open_gate(void *arg) {
  struct race *r = arg;
  pthread_barrier_wait(&r->start);
  demo_gate_open(r->gate);
  return NULL;
}

static void *cancel_op(void *arg) {
  struct race *r = arg;
  pthread_barrier_wait(&r->start);
  STATUS(apm_tap_op_cancel(r->op), APM_TAP_STATUS_OK);
  return NULL;
}

static void cancel_racing_completion(void) {
  int cancelled = 0, completed = 0;
  for (int round = 0; round < 200; round++) {
    struct seen s;
    struct race r;
    seen_init(&s);
    pthread_barrier_init(&r.start, NULL, 2);
    r.gate = demo_gate_new();
    r.op = demo_gated_begin(r.gate, round, record, &s);
    pthread_t a, b;
    pthread_create(&a, NULL, open_gate, &r);
    pthread_create(&b, NULL, cancel_op, &r);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    int32_t out = -1;
    apm_tap_status status = demo_gated_end(r.op, &out);
    seen_wait(&s);
    CHECK(s.calls == 1);
    if (status == APM_TAP_STATUS_OK) {
      CHECK(out == round);
      completed++;
    } else {
      STATUS(status, APM_TAP_STATUS_CANCELLED);
      CHECK(out == -1);
      cancelled++;
    }
    pthread_barrier_destroy(&r.start);
    seen_destroy(&s);
  }
  printf("cancel racing completion: %d cancelled, %d completed, one callback each\n",
         cancelled, completed);
}

static void a_panicking_future(void) {
  struct seen s;
  seen_init(&s);
  apm_tap_op *op = demo_panic_begin(0, record, &s);
  CHECK(s.calls == 1 && s.synchronously);
  int32_t out = -1;
  STATUS(demo_panic_end(op, &out), APM_TAP_STATUS_PANICKED);
  CHECK(out == -1);
  seen_destroy(&s);
  puts("a panicking Rust future: APM_TAP_STATUS_PANICKED, and the process goes on");
}

static void misuse(void) {
  bool flag = false;
  void *state = NULL;
  int32_t out = 0;
  int64_t wide = 0;
  STATUS(apm_tap_op_is_completed(NULL, &flag), APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(apm_tap_op_completed_synchronously(NULL, &flag), APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(apm_tap_op_state(NULL, &state), APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(apm_tap_op_wait(NULL, 0), APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(apm_tap_op_cancel(NULL), APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(apm_tap_op_release(NULL), APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(demo_add_end(NULL, &out), APM_TAP_STATUS_INVALID_ARGUMENT);
  apm_tap_op *op = demo_add_begin(1, 2, NULL, NULL);
  STATUS(apm_tap_op_is_completed(op, NULL), APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(demo_add_end(op, NULL), APM_TAP_STATUS_INVALID_ARGUMENT);
  /* Other operations' ends, one with an int64_t result and one with the same int32_t:
   * refused, nothing consumed. */
  STATUS(demo_yield_end(op, &wide), APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(demo_gated_end(op, &out), APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(demo_add_end(op, &out), APM_TAP_STATUS_OK);
  CHECK(out == 3);
  /* Released while its future runs: a second release is caught. */
  uint32_t gate = demo_gate_new();
  op = demo_gated_begin(gate, 0, NULL, NULL);
  STATUS(apm_tap_op_release(op), APM_TAP_STATUS_OK);
  STATUS(apm_tap_op_release(op), APM_TAP_STATUS_INVALID_ARGUMENT);
  STATUS(demo_gated_end(op, &out), APM_TAP_STATUS_ALREADY_ENDED);
  demo_gate_open(gate);
  puts("misuse: NULL, the wrong end and a second release are refused");
}

/* 8 threads begin operations whose callbacks end them and count. */
enum { THREADS = 8, PER_THREAD = 1000 };

struct totals {
  atomic_long calls;
  atomic_long sum;
  pthread_mutex_t lock;
  pthread_cond_t done;
};

static void count(apm_tap_op *op, void *state) {
  struct totals *t = state;
  int64_t value = 0;
  STATUS(demo_yield_end(op, &value), APM_TAP_STATUS_OK);
  atomic_fetch_add(&t->sum, value);
  if (atomic_fetch_add(&t->calls, 1) + 1 == THREADS * PER_THREAD) {
    pthread_mutex_lock(&t->lock);
    pthread_cond_signal(&t->done);
    pthread_mutex_unlock(&t->lock);
  }
}

struct beginner {
  struct totals *totals;
  int64_t first;
  pthread_t thread;
};

static void *begin_many(void *arg) {
  struct beginner *b = arg;
  for (int64_t i = 0; i < PER_THREAD; i++) (void)demo_yield_begin(b->first + i, count, b->totals);
  return NULL;
}

static void callbacks_on_many_threads(void) {
  struct totals t;
  atomic_init(&t.calls, 0);
  atomic_init(&t.sum, 0);
  pthread_mutex_init(&t.lock, NULL);
  pthread_cond_init(&t.done, NULL);
  struct beginner b[THREADS];
  for (int i = 0; i < THREADS; i++) {
    b[i].totals = &t;
    b[i].first = (int64_t)i * PER_THREAD;
    pthread_create(&b[i].thread, NULL, begin_many, &b[i]);
  }
  for (int i = 0; i < THREADS; i++) pthread_join(b[i].thread, NULL);
  pthread_mutex_lock(&t.lock);
  while (atomic_load(&t.calls) != THREADS * PER_THREAD) pthread_cond_wait(&t.done, &t.lock);
  pthread_mutex_unlock(&t.lock);
  const long n = THREADS * PER_THREAD;
  CHECK(atomic_load(&t.sum) == n * (n - 1) / 2);
  pthread_mutex_destroy(&t.lock);
  pthread_cond_destroy(&t.done);
  printf("%d threads x %d operations: %ld callbacks, each once\n", THREADS, PER_THREAD,
         atomic_load(&t.calls));
}

int main(void) {
  synchronous_completion();
  asynchronous_completion();
  end_inside_the_callback_and_end_twice();
  callbacks_that_call_back_in();
  wait_with_timeout();
  cancel_racing_completion();
  a_panicking_future();
  misuse();
  callbacks_on_many_threads();
  demo_gates_free();
  return 0;
}
