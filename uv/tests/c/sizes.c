/* Prints what uv/src/sys.rs declares by hand, from the real uv.h: tests/sizes.rs
 * compares each line with the Rust side. */
#include <stddef.h>
#include <stdio.h>
#include <uv.h>

int main(void) {
  printf("uv_stat_t %zu\n", sizeof(uv_stat_t));
  printf("uv_stat_t.st_size %zu\n", offsetof(uv_stat_t, st_size));
  printf("uv_stat_t.st_mtim %zu\n", offsetof(uv_stat_t, st_mtim));
  printf("uv_timespec_t %zu\n", sizeof(uv_timespec_t));
  printf("uv_buf_t %zu\n", sizeof(uv_buf_t));
  printf("uv_buf_t.base %zu\n", offsetof(uv_buf_t, base));
  printf("uv_buf_t.len %zu\n", offsetof(uv_buf_t, len));
  printf("UV_RUN_DEFAULT %d\n", (int)UV_RUN_DEFAULT);
  printf("UV_ASYNC %d\n", (int)UV_ASYNC);
  printf("UV_FS %d\n", (int)UV_FS);
  printf("UV_WORK %d\n", (int)UV_WORK);
  printf("UV_GETADDRINFO %d\n", (int)UV_GETADDRINFO);
  printf("UV_ECANCELED %d\n", (int)UV_ECANCELED);
  printf("uv_fs_t %zu\n", sizeof(uv_fs_t));
  printf("uv_work_t %zu\n", sizeof(uv_work_t));
  printf("uv_getaddrinfo_t %zu\n", sizeof(uv_getaddrinfo_t));
  return 0;
}
