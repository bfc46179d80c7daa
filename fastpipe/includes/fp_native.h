/* Small C/C++ helpers for fastpipe's Cython core: threads, timed condition
 * waits on a monotonic clock, atomics and string arrays.  Everything here is
 * a thin wrapper over pthreads, GCC atomics and std::string; the logic lives
 * in the .pxi files. */
#ifndef FP_NATIVE_H
#define FP_NATIVE_H

#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <string>
#include <new>

/* ---- atomics (sequentially consistent unless named otherwise) ---------- */
static inline int64_t fp_load(const int64_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline int64_t fp_load_relaxed(const int64_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void fp_store(int64_t* p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline int64_t fp_fetch_add(int64_t* p, int64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
static inline int64_t fp_fetch_add_relaxed(int64_t* p, int64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline int64_t fp_exchange(int64_t* p, int64_t v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }
static inline int fp_cas(int64_t* p, int64_t expected, int64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline int64_t fp_fetch_or(int64_t* p, int64_t v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
static inline int64_t fp_load_seq(const int64_t* p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline int fp_mul_overflow(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out); }
static inline void fp_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void fp_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void fp_yield(void) { sched_yield(); }

/* ---- clock --------------------------------------------------------------- */
static inline int64_t fp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- mutex + condition variable on CLOCK_MONOTONIC ------------------------ */
typedef struct { pthread_mutex_t m; } fp_mutex;
typedef struct { pthread_cond_t c; } fp_cond;

static inline void fp_mutex_init(fp_mutex* m) { pthread_mutex_init(&m->m, NULL); }
static inline void fp_mutex_destroy(fp_mutex* m) { pthread_mutex_destroy(&m->m); }
static inline void fp_lock(fp_mutex* m) { pthread_mutex_lock(&m->m); }
static inline void fp_unlock(fp_mutex* m) { pthread_mutex_unlock(&m->m); }

static inline void fp_cond_init(fp_cond* c) {
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&c->c, &a);
    pthread_condattr_destroy(&a);
}
static inline void fp_cond_destroy(fp_cond* c) { pthread_cond_destroy(&c->c); }
static inline void fp_signal(fp_cond* c) { pthread_cond_signal(&c->c); }
static inline void fp_broadcast(fp_cond* c) { pthread_cond_broadcast(&c->c); }
static inline void fp_wait(fp_cond* c, fp_mutex* m) { pthread_cond_wait(&c->c, &m->m); }
/* Wait until the absolute monotonic deadline (ns). Returns 1 on timeout. */
static inline int fp_wait_until(fp_cond* c, fp_mutex* m, int64_t deadline_ns) {
    struct timespec ts;
    ts.tv_sec = deadline_ns / 1000000000LL;
    ts.tv_nsec = deadline_ns % 1000000000LL;
    return pthread_cond_timedwait(&c->c, &m->m, &ts) == ETIMEDOUT;
}

/* ---- threads ------------------------------------------------------------- */
typedef void* (*fp_thread_fn)(void*);
typedef struct { pthread_t t; } fp_thread;
/* Returns 0 on success, an errno value otherwise. */
static inline int fp_thread_start(fp_thread* th, fp_thread_fn fn, void* arg) {
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 8u << 20);
    int rc = pthread_create(&th->t, &a, fn, arg);
    pthread_attr_destroy(&a);
    return rc;
}
static inline void fp_thread_join(fp_thread* th) { pthread_join(th->t, NULL); }

static inline void* fp_aligned_alloc(size_t align, size_t n) {
    void* p = NULL;
    return posix_memalign(&p, align, n ? n : align) == 0 ? p : NULL;
}

/* ---- string arrays (string tensors) --------------------------------------- */
static inline std::string* fp_str_array_new(int64_t n) {
    return new (std::nothrow) std::string[n > 0 ? n : 1];
}
static inline void fp_str_array_delete(std::string* p) { delete[] p; }

#endif
