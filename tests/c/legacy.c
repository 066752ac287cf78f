/*
 * A small legacy C library, in the shape most C callback APIs have: start a request
 * with (callback, user_data), get called back once on the library's worker thread. Some
 * requests misbehave on purpose: their callback comes inside start, never (until the
 * library is "destroyed"), or twice. tests/ffi_c_library.rs compiles it into a shared
 * library, loads it and wraps it with apm_tap::ffi.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef void (*legacy_cb)(void *user_data, int result);

enum legacy_mode {
  LEGACY_WORKER = 0, /* from the worker thread */
  LEGACY_INLINE = 1, /* inside legacy_start */
  LEGACY_NEVER = 2,  /* not until legacy_destroy_pending */
  LEGACY_TWICE = 3,  /* twice, from the worker thread (a bug) */
  LEGACY_HELD = 4,   /* from the worker thread, once legacy_release or legacy_cancel */
};

enum { LEGACY_CANCELLED = -125 };

typedef struct legacy_request {
  int value;
  int mode;
  legacy_cb cb;
  void *user_data;
  int queued; /* guarded by queue_lock */
  int cancelled; /* guarded by queue_lock */
  struct legacy_request *next;
} legacy_request;

static atomic_int live_requests;

/* Requests whose callback is due, served in order by one worker thread. */
static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cond = PTHREAD_COND_INITIALIZER;
static legacy_request *queue_head, *queue_tail;
static int worker_started;

/* Requests whose callback never comes until legacy_destroy_pending. */
static pthread_mutex_t pending_lock = PTHREAD_MUTEX_INITIALIZER;
static legacy_request *pending;

int legacy_live_requests(void) { return atomic_load(&live_requests); }

/* Frees a request once its callback has come (or never will). */
void legacy_request_free(legacy_request *req) {
  free(req);
  atomic_fetch_sub(&live_requests, 1);
}

static void *worker(void *arg) {
  (void)arg;
  for (;;) {
    pthread_mutex_lock(&queue_lock);
    while (queue_head == NULL) pthread_cond_wait(&queue_cond, &queue_lock);
    legacy_request *req = queue_head;
    queue_head = req->next;
    if (queue_head == NULL) queue_tail = NULL;
    int result = req->cancelled ? LEGACY_CANCELLED : 2 * req->value;
    pthread_mutex_unlock(&queue_lock);
    /* Everything the callback needs is read: after it, the request is not touched. */
    legacy_cb cb = req->cb;
    void *user_data = req->user_data;
    int twice = req->mode == LEGACY_TWICE;
    cb(user_data, result);
    if (twice) cb(user_data, result);
  }
  return NULL;
}

/* Queues `req`'s callback, once; called with queue_lock held. */
static void enqueue(legacy_request *req) {
  if (req->queued) return;
  req->queued = 1;
  req->next = NULL;
  if (queue_tail != NULL) queue_tail->next = req; else queue_head = req;
  queue_tail = req;
  if (!worker_started) {
    pthread_t thread;
    pthread_create(&thread, NULL, worker, NULL);
    pthread_detach(thread);
    worker_started = 1;
  }
  pthread_cond_signal(&queue_cond);
}

/* Starts a request; NULL (and no callback ever) when `value` is negative. */
legacy_request *legacy_start(int value, int mode, legacy_cb cb, void *user_data) {
  if (value < 0) return NULL;
  legacy_request *req = calloc(1, sizeof *req);
  if (req == NULL) return NULL;
  atomic_fetch_add(&live_requests, 1);
  req->value = value;
  req->mode = mode;
  req->cb = cb;
  req->user_data = user_data;
  switch (mode) {
    case LEGACY_INLINE:
      cb(user_data, 2 * value);
      break;
    case LEGACY_NEVER:
      pthread_mutex_lock(&pending_lock);
      req->next = pending;
      pending = req;
      pthread_mutex_unlock(&pending_lock);
      break;
    case LEGACY_HELD:
      break;
    default:
      pthread_mutex_lock(&queue_lock);
      enqueue(req);
      pthread_mutex_unlock(&queue_lock);
  }
  return req;
}

/* Lets a held request call back. */
void legacy_release(legacy_request *req) {
  pthread_mutex_lock(&queue_lock);
  enqueue(req);
  pthread_mutex_unlock(&queue_lock);
}

/* Asks a request to stop: its callback still comes, with LEGACY_CANCELLED unless it
 * was due already. */
void legacy_cancel(legacy_request *req) {
  pthread_mutex_lock(&queue_lock);
  if (!req->queued) req->cancelled = 1;
  enqueue(req);
  pthread_mutex_unlock(&queue_lock);
}

/* "Destroys" the library's pending requests: their callbacks will never come; `never`
 * is told each one's user data. Returns how many. */
int legacy_destroy_pending(void (*never)(void *user_data)) {
  pthread_mutex_lock(&pending_lock);
  legacy_request *list = pending;
  pending = NULL;
  pthread_mutex_unlock(&pending_lock);
  int n = 0;
  for (legacy_request *req = list; req != NULL; n++) {
    legacy_request *next = req->next;
    never(req->user_data);
    req = next;
  }
  return n;
}
