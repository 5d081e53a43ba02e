/* malloc_counter: an LD_PRELOAD interposer that counts every heap allocation of a process.
 *
 * It wraps malloc, calloc, realloc, reallocarray, free, posix_memalign, aligned_alloc, memalign,
 * valloc and pvalloc, forwards each call to the next definition (glibc's, found with
 * dlsym(RTLD_NEXT, ...)) and counts, with atomics:
 *   heap_bytes  the total number of bytes requested (realloc counts its new size in full),
 *   heap_calls  the number of allocating calls (free is not counted),
 *   heap_max    the largest single request.
 * Nothing is ever subtracted: the totals are what the process asked the heap for, not what it
 * holds at the end, so a 256 MiB buffer that is allocated and freed again still shows.
 *
 * glibc routes its own internal allocations (and libstdc++'s operator new) through these symbols,
 * so everything that reaches the heap is seen. Memory obtained with mmap directly (the memfd
 * arena, Arrow reading a mapping) is not heap and is not counted: that is the point of the proof.
 *
 * At exit (a destructor; this library is finalized after the ones loaded after it) one line
 *   heap_bytes=<N> heap_calls=<M> heap_max=<K> pid=<P>
 * is appended to the file named by the environment variable MALLOC_COUNTER_OUT, when it is set.
 * A process that is killed or calls _exit writes nothing.
 *
 * Programs that want the figures while running look up
 *   long long malloc_counter_bytes(void), malloc_counter_calls(void), malloc_counter_max(void)
 * with dlsym(RTLD_DEFAULT, ...): present only when the interposer is loaded.
 *
 * Bootstrap: dlsym itself may call calloc/malloc (for its error buffer) before the real functions
 * are known. Such calls are served from a small static buffer that is never handed back.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef void* (*malloc_fn)(size_t);
typedef void* (*calloc_fn)(size_t, size_t);
typedef void* (*realloc_fn)(void*, size_t);
typedef void (*free_fn)(void*);
typedef int (*posix_memalign_fn)(void**, size_t, size_t);
typedef void* (*aligned_alloc_fn)(size_t, size_t);
typedef void* (*memalign_fn)(size_t, size_t);
typedef void* (*valloc_fn)(size_t);

static struct {
  malloc_fn malloc;
  calloc_fn calloc;
  realloc_fn realloc;
  free_fn free;
  posix_memalign_fn posix_memalign;
  aligned_alloc_fn aligned_alloc;
  memalign_fn memalign;
  valloc_fn valloc;
  valloc_fn pvalloc;
} real;

static atomic_llong counted_bytes;
static atomic_llong counted_calls;
static atomic_llong counted_max;

enum { kUnresolved = 0, kResolving = 1, kReady = 2 };
static atomic_int state = kUnresolved;

/* Bootstrap buffer: bump allocation, 16-byte aligned, each block preceded by its size. */
#define BOOTSTRAP_SIZE 65536
static _Alignas(16) unsigned char bootstrap[BOOTSTRAP_SIZE];
static atomic_size_t bootstrap_used;

static int in_bootstrap(const void* p) {
  return (const unsigned char*)p >= bootstrap &&
         (const unsigned char*)p < bootstrap + BOOTSTRAP_SIZE;
}

static void* bootstrap_alloc(size_t size) {
  const size_t need = 16 + ((size + 15) & ~(size_t)15);
  const size_t at = atomic_fetch_add(&bootstrap_used, need);
  if (need > BOOTSTRAP_SIZE || at > BOOTSTRAP_SIZE - need) {
    static const char message[] = "malloc_counter: bootstrap buffer exhausted\n";
    (void)!write(2, message, sizeof(message) - 1);
    abort();
  }
  memcpy(bootstrap + at, &size, sizeof(size));
  return bootstrap + at + 16; /* static storage: already zero, as calloc needs */
}

static size_t bootstrap_size(const void* p) {
  size_t size;
  memcpy(&size, (const unsigned char*)p - 16, sizeof(size));
  return size;
}

static void count(size_t bytes) {
  atomic_fetch_add_explicit(&counted_bytes, (long long)bytes, memory_order_relaxed);
  atomic_fetch_add_explicit(&counted_calls, 1, memory_order_relaxed);
  long long peak = atomic_load_explicit(&counted_max, memory_order_relaxed);
  while ((long long)bytes > peak &&
         !atomic_compare_exchange_weak_explicit(&counted_max, &peak, (long long)bytes,
                                                memory_order_relaxed, memory_order_relaxed)) {
  }
}

/* True when the real functions are known. False while they are being looked up (by this thread,
 * from inside dlsym, or by another thread racing it): the caller then uses the bootstrap buffer. */
static int resolve(void) {
  int expected = kUnresolved;
  if (atomic_load(&state) == kReady) return 1;
  if (!atomic_compare_exchange_strong(&state, &expected, kResolving)) {
    return atomic_load(&state) == kReady;
  }
  real.malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
  real.calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
  real.realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
  real.free = (free_fn)dlsym(RTLD_NEXT, "free");
  real.posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
  real.aligned_alloc = (aligned_alloc_fn)dlsym(RTLD_NEXT, "aligned_alloc");
  real.memalign = (memalign_fn)dlsym(RTLD_NEXT, "memalign");
  real.valloc = (valloc_fn)dlsym(RTLD_NEXT, "valloc");
  real.pvalloc = (valloc_fn)dlsym(RTLD_NEXT, "pvalloc");
  if (!real.malloc || !real.calloc || !real.realloc || !real.free || !real.posix_memalign ||
      !real.aligned_alloc || !real.memalign || !real.valloc || !real.pvalloc) {
    static const char message[] = "malloc_counter: dlsym(RTLD_NEXT) found no malloc family\n";
    (void)!write(2, message, sizeof(message) - 1);
    abort();
  }
  atomic_store(&state, kReady);
  return 1;
}

EXPORT void* malloc(size_t size) {
  count(size);
  if (!resolve()) return bootstrap_alloc(size);
  return real.malloc(size);
}

EXPORT void* calloc(size_t n, size_t size) {
  size_t bytes;
  if (__builtin_mul_overflow(n, size, &bytes)) {
    errno = ENOMEM;
    return NULL;
  }
  count(bytes);
  if (!resolve()) return bootstrap_alloc(bytes);
  return real.calloc(n, size);
}

EXPORT void* realloc(void* p, size_t size) {
  count(size);
  if (!resolve()) {
    void* moved = bootstrap_alloc(size);
    if (p != NULL) {
      const size_t old = bootstrap_size(p);
      memcpy(moved, p, old < size ? old : size);
    }
    return moved;
  }
  if (p != NULL && in_bootstrap(p)) {
    void* moved = real.malloc(size);
    if (moved != NULL) {
      const size_t old = bootstrap_size(p);
      memcpy(moved, p, old < size ? old : size);
    }
    return moved;
  }
  return real.realloc(p, size);
}

EXPORT void* reallocarray(void* p, size_t n, size_t size) {
  size_t bytes;
  if (__builtin_mul_overflow(n, size, &bytes)) {
    errno = ENOMEM;
    return NULL;
  }
  return realloc(p, bytes);
}

EXPORT void free(void* p) {
  if (p == NULL || in_bootstrap(p)) return;
  if (!resolve()) return; /* cannot happen: only memory from a resolved malloc reaches here */
  real.free(p);
}

EXPORT int posix_memalign(void** out, size_t alignment, size_t size) {
  count(size);
  if (!resolve()) {
    if (alignment > 16) return ENOMEM;
    *out = bootstrap_alloc(size);
    return 0;
  }
  return real.posix_memalign(out, alignment, size);
}

EXPORT void* aligned_alloc(size_t alignment, size_t size) {
  count(size);
  if (!resolve()) return alignment <= 16 ? bootstrap_alloc(size) : NULL;
  return real.aligned_alloc(alignment, size);
}

EXPORT void* memalign(size_t alignment, size_t size) {
  count(size);
  if (!resolve()) return alignment <= 16 ? bootstrap_alloc(size) : NULL;
  return real.memalign(alignment, size);
}

EXPORT void* valloc(size_t size) {
  count(size);
  if (!resolve()) return NULL;
  return real.valloc(size);
}

EXPORT void* pvalloc(size_t size) {
  count(size);
  if (!resolve()) return NULL;
  return real.pvalloc(size);
}

EXPORT long long malloc_counter_bytes(void) { return atomic_load(&counted_bytes); }
EXPORT long long malloc_counter_calls(void) { return atomic_load(&counted_calls); }
EXPORT long long malloc_counter_max(void) { return atomic_load(&counted_max); }

__attribute__((constructor)) static void malloc_counter_init(void) { (void)resolve(); }

__attribute__((destructor)) static void malloc_counter_report(void) {
  const char* path = getenv("MALLOC_COUNTER_OUT");
  if (path == NULL || path[0] == '\0') return;
  char line[160];
  const int n = snprintf(
      line, sizeof(line), "heap_bytes=%lld heap_calls=%lld heap_max=%lld pid=%ld\n",
      malloc_counter_bytes(), malloc_counter_calls(), malloc_counter_max(), (long)getpid());
  const int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0 || n <= 0) return;
  (void)!write(fd, line, (size_t)n);
  close(fd);
}
