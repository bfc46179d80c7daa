# Extern declarations of fp_native.h (threads, mutexes, condition variables on
# a monotonic clock, atomics, std::string arrays) for the Cython core.
from libc.stdint cimport int64_t
from libcpp.string cimport string

cdef extern from "fp_native.h" nogil:
    int64_t fp_load(const int64_t* p)
    int64_t fp_load_relaxed(const int64_t* p)
    void fp_store(int64_t* p, int64_t v)
    int64_t fp_fetch_add(int64_t* p, int64_t v)
    int64_t fp_fetch_add_relaxed(int64_t* p, int64_t v)
    int64_t fp_exchange(int64_t* p, int64_t v)
    bint fp_cas(int64_t* p, int64_t expected, int64_t desired)
    void fp_fence()
    bint fp_mul_overflow(int64_t a, int64_t b, int64_t* out)
    int64_t fp_fetch_or(int64_t* p, int64_t v)
    int64_t fp_load_seq(const int64_t* p)
    void fp_cpu_relax()
    void fp_yield()
    int64_t fp_now_ns()

    ctypedef struct fp_mutex:
        pass
    ctypedef struct fp_cond:
        pass
    void fp_mutex_init(fp_mutex* m)
    void fp_mutex_destroy(fp_mutex* m)
    void fp_lock(fp_mutex* m)
    void fp_unlock(fp_mutex* m)
    void fp_cond_init(fp_cond* c)
    void fp_cond_destroy(fp_cond* c)
    void fp_signal(fp_cond* c)
    void fp_broadcast(fp_cond* c)
    void fp_wait(fp_cond* c, fp_mutex* m)
    bint fp_wait_until(fp_cond* c, fp_mutex* m, int64_t deadline_ns)

    ctypedef void* (*fp_thread_fn)(void*) noexcept nogil
    ctypedef struct fp_thread:
        pass
    int fp_thread_start(fp_thread* th, fp_thread_fn fn, void* arg)
    void fp_thread_join(fp_thread* th)

    void* fp_aligned_alloc(size_t align, size_t n)
    string* fp_str_array_new(int64_t n)
    void fp_str_array_delete(string* p)
