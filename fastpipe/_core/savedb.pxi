# Save, Load, DBExists and GetAllBlobNames over fastpipe's "minidb" file
# format (docs/minidb.md has the byte layout).
#
# A db is one file: a 32-byte header (magic, version, record count, CRC-32C)
# then one record per blob -- a header (kind, dtype, shape, name, payload
# length; its own CRC-32C) and the payload (its own CRC-32C).  Kernels do all
# file I/O without the GIL, writing payloads straight from tensor buffers and
# reading them straight into new ones (no staging copy of numeric data).
#
# Save writes a temporary file next to the target, fsyncs it and renames it
# over the target (then fsyncs the directory), so a reader sees the old db or
# the new one, never half of one, and a crash mid-save leaves the old db.
#
# Blobs that hold native objects with state are saved too: counters (their
# count), dataset cursors (field names and offsets; cursor_get_state in
# dataset.pxi) and text file readers (file, fields and position;
# text_reader_get_state in textfile.pxi).  Queues, mutexes, timers, readers and writers are refused with
# an error naming the blob, as Caffe2's Save refuses a blob it has no
# serializer for.
#
# Thread contract: a tensor input is pinned (tensor_snapshot) while it is
# written, so a concurrent reshape never frees bytes being written; a loaded
# tensor replaces the output's header under the blob's tensor lock.  Objects'
# state is read under the object's own lock (cursor mutex, atomic counter).

cdef extern from *:
    """
    #include <cstdint>
    #include <cstring>
    #include <string>
    #include <fcntl.h>
    #include <unistd.h>
    #include <errno.h>
    #include <sys/stat.h>
    #include <string.h>
    #if defined(__x86_64__)
    #include <nmmintrin.h>
    #endif

    /* CRC-32C (Castagnoli), reflected polynomial 0x82F63B78: the SSE4.2
       instruction where the CPU has it, else slicing-by-8 tables (built once;
       C++ static initialisation is thread-safe). */
    struct FpCrcTables {
        uint32_t t[8][256];
        FpCrcTables() {
            for (uint32_t i = 0; i < 256; i++) {
                uint32_t c = i;
                for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
                t[0][i] = c;
            }
            for (uint32_t i = 0; i < 256; i++)
                for (int k = 1; k < 8; k++) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFF];
        }
    };
    static const FpCrcTables& fp_crc_tables() { static FpCrcTables tabs; return tabs; }

    static uint32_t fp_crc32c_sw(uint32_t c, const unsigned char* p, size_t n) {
        const FpCrcTables& T = fp_crc_tables();
        while (n && ((uintptr_t)p & 7)) { c = T.t[0][(c ^ *p++) & 0xFF] ^ (c >> 8); n--; }
        while (n >= 8) {
            uint64_t v; memcpy(&v, p, 8);
            v ^= c;
            c = T.t[7][v & 0xFF] ^ T.t[6][(v >> 8) & 0xFF] ^ T.t[5][(v >> 16) & 0xFF] ^
                T.t[4][(v >> 24) & 0xFF] ^ T.t[3][(v >> 32) & 0xFF] ^ T.t[2][(v >> 40) & 0xFF] ^
                T.t[1][(v >> 48) & 0xFF] ^ T.t[0][v >> 56];
            p += 8; n -= 8;
        }
        while (n) { c = T.t[0][(c ^ *p++) & 0xFF] ^ (c >> 8); n--; }
        return c;
    }

    #if defined(__x86_64__)
    /* Three independent CRC streams over adjacent blocks hide the crc32
       instruction's 3-cycle latency; the block CRCs are combined with
       "append LEN zero bytes" operators (GF(2) matrices applied through
       byte tables), as in Mark Adler's crc32c.c. */
    enum { FP_CRC_LONG = 8192, FP_CRC_SHORT = 256 };

    static uint32_t fp_gf2_times(const uint32_t* mat, uint32_t vec) {
        uint32_t sum = 0;
        while (vec) { if (vec & 1) sum ^= *mat; vec >>= 1; mat++; }
        return sum;
    }
    static void fp_gf2_square(uint32_t* sq, const uint32_t* mat) {
        for (int n = 0; n < 32; n++) sq[n] = fp_gf2_times(mat, mat[n]);
    }
    /* the operator that appends len zero bytes to a (raw) CRC register */
    static void fp_crc_zeros_op(uint32_t* even, size_t len) {
        uint32_t odd[32], row = 1;
        odd[0] = 0x82F63B78u;
        for (int n = 1; n < 32; n++) { odd[n] = row; row <<= 1; }
        fp_gf2_square(even, odd);   /* 2 zero bits */
        fp_gf2_square(odd, even);   /* 4 zero bits */
        do {
            fp_gf2_square(even, odd);
            len >>= 1;
            if (len == 0) return;
            fp_gf2_square(odd, even);
            len >>= 1;
        } while (len);
        for (int n = 0; n < 32; n++) even[n] = odd[n];
    }
    struct FpCrcShift {
        uint32_t t[4][256];
        explicit FpCrcShift(size_t len) {
            uint32_t op[32];
            fp_crc_zeros_op(op, len);
            for (uint32_t n = 0; n < 256; n++) {
                t[0][n] = fp_gf2_times(op, n);
                t[1][n] = fp_gf2_times(op, n << 8);
                t[2][n] = fp_gf2_times(op, n << 16);
                t[3][n] = fp_gf2_times(op, n << 24);
            }
        }
        uint32_t operator()(uint32_t c) const {
            return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
        }
    };
    static const FpCrcShift& fp_crc_long() { static FpCrcShift s(FP_CRC_LONG); return s; }
    static const FpCrcShift& fp_crc_short() { static FpCrcShift s(FP_CRC_SHORT); return s; }

    __attribute__((target("sse4.2")))
    static uint32_t fp_crc32c_hw(uint32_t c32, const unsigned char* p, size_t n) {
        uint64_t c0 = c32, c1, c2, v0, v1, v2;
        const unsigned char* end;
        while (n && ((uintptr_t)p & 7)) { c0 = _mm_crc32_u8((uint32_t)c0, *p++); n--; }
        if (n >= 3 * FP_CRC_LONG) {
            const FpCrcShift& sh = fp_crc_long();
            do {
                c1 = c2 = 0;
                end = p + FP_CRC_LONG;
                do {
                    memcpy(&v0, p, 8); memcpy(&v1, p + FP_CRC_LONG, 8); memcpy(&v2, p + 2 * FP_CRC_LONG, 8);
                    c0 = _mm_crc32_u64(c0, v0); c1 = _mm_crc32_u64(c1, v1); c2 = _mm_crc32_u64(c2, v2);
                    p += 8;
                } while (p < end);
                c0 = sh((uint32_t)c0) ^ (uint32_t)c1;
                c0 = sh((uint32_t)c0) ^ (uint32_t)c2;
                p += 2 * FP_CRC_LONG;
                n -= 3 * FP_CRC_LONG;
            } while (n >= 3 * FP_CRC_LONG);
        }
        if (n >= 3 * FP_CRC_SHORT) {
            const FpCrcShift& sh = fp_crc_short();
            do {
                c1 = c2 = 0;
                end = p + FP_CRC_SHORT;
                do {
                    memcpy(&v0, p, 8); memcpy(&v1, p + FP_CRC_SHORT, 8); memcpy(&v2, p + 2 * FP_CRC_SHORT, 8);
                    c0 = _mm_crc32_u64(c0, v0); c1 = _mm_crc32_u64(c1, v1); c2 = _mm_crc32_u64(c2, v2);
                    p += 8;
                } while (p < end);
                c0 = sh((uint32_t)c0) ^ (uint32_t)c1;
                c0 = sh((uint32_t)c0) ^ (uint32_t)c2;
                p += 2 * FP_CRC_SHORT;
                n -= 3 * FP_CRC_SHORT;
            } while (n >= 3 * FP_CRC_SHORT);
        }
        while (n >= 8) { memcpy(&v0, p, 8); c0 = _mm_crc32_u64(c0, v0); p += 8; n -= 8; }
        while (n) { c0 = _mm_crc32_u8((uint32_t)c0, *p++); n--; }
        return (uint32_t)c0;
    }
    static int fp_crc_has_hw() { static int hw = __builtin_cpu_supports("sse4.2"); return hw; }
    #endif

    /* crc: the CRC of the bytes before p (0 for none); returns the CRC of all. */
    static uint32_t fp_crc32c(uint32_t crc, const void* p, size_t n) {
        uint32_t c = ~crc;
    #if defined(__x86_64__)
        if (fp_crc_has_hw()) return ~fp_crc32c_hw(c, (const unsigned char*)p, n);
    #endif
        return ~fp_crc32c_sw(c, (const unsigned char*)p, n);
    }

    /* 0, or an errno. */
    static int fp_db_write_all(int fd, const void* p, int64_t n) {
        const char* c = (const char*)p;
        while (n > 0) {
            ssize_t k = write(fd, c, n > (1 << 30) ? (1 << 30) : (size_t)n);
            if (k < 0) { if (errno == EINTR) continue; return errno; }
            c += k; n -= k;
        }
        return 0;
    }

    /* Bytes read (fewer than n only at end of file), or -1 with *eno set. */
    static int64_t fp_db_read_all(int fd, void* p, int64_t n, int* eno) {
        char* c = (char*)p;
        int64_t got = 0;
        while (got < n) {
            int64_t want = n - got;
            ssize_t k = read(fd, c + got, want > (1 << 30) ? (1 << 30) : (size_t)want);
            if (k < 0) { if (errno == EINTR) continue; *eno = errno; return -1; }
            if (k == 0) break;
            got += k;
        }
        return got;
    }

    static std::string fp_db_strerror(int e) {
        char buf[256];
        return std::string(strerror_r(e, buf, sizeof buf));   /* GNU variant */
    }

    static int fp_db_open_read(const char* path, int* eno) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) *eno = errno;
        return fd;
    }
    /* bytes of the open file after the current offset (-1: unknown) */
    static int64_t fp_db_left(int fd) {
        struct stat st;
        off_t cur = lseek(fd, 0, SEEK_CUR);
        if (cur < 0 || fstat(fd, &st) != 0) return -1;
        return (int64_t)st.st_size - (int64_t)cur;
    }
    static int fp_db_open_new(const char* path, int* eno) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) *eno = errno;
        return fd;
    }
    /* fsync + close; 0 or an errno. */
    static int fp_db_finish(int fd) {
        int e = 0;
        if (fsync(fd) != 0) e = errno;
        if (close(fd) != 0 && !e) e = errno;
        return e;
    }
    static int fp_db_rename(const char* from, const char* to) {
        return rename(from, to) == 0 ? 0 : errno;
    }
    /* Make a rename durable: fsync the directory holding path (best effort). */
    static void fp_db_sync_dir(const std::string& path) {
        size_t k = path.rfind('/');
        std::string dir = k == std::string::npos ? std::string(".") : (k == 0 ? std::string("/") : path.substr(0, k));
        int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) { fsync(fd); close(fd); }
    }
    static int fp_db_skip(int fd, int64_t n) {
        return lseek(fd, (off_t)n, SEEK_CUR) < 0 ? errno : 0;
    }
    static int fp_db_is_file(const char* path) {
        struct stat st;
        return stat(path, &st) == 0 && S_ISREG(st.st_mode);
    }
    """
    uint32_t fp_crc32c(uint32_t crc, const void* p, size_t n) noexcept nogil
    int fp_db_write_all(int fd, const void* p, int64_t n) noexcept nogil
    int64_t fp_db_read_all(int fd, void* p, int64_t n, int* eno) noexcept nogil
    string fp_db_strerror(int e) noexcept nogil
    int64_t fp_db_left(int fd) noexcept nogil
    int fp_db_open_read(const char* path, int* eno) noexcept nogil
    int fp_db_open_new(const char* path, int* eno) noexcept nogil
    int fp_db_finish(int fd) noexcept nogil
    int fp_db_rename(const char* frm, const char* to) noexcept nogil
    void fp_db_sync_dir(const string& path) noexcept nogil
    int fp_db_skip(int fd, int64_t n) noexcept nogil
    int fp_db_is_file(const char* path) noexcept nogil
    int fp_getpid "getpid"() noexcept nogil
    int fp_close "close"(int fd) noexcept nogil
    int fp_unlink "unlink"(const char* path) noexcept nogil

from libc.stdint cimport uint32_t
from libc.errno cimport ENOENT
from libc.string cimport memcmp

DEF DB_HEADER_LEN = 32       # file header
DEF DB_REC_FIXED = 32        # fixed part of a record header
DEF DB_MAX_NAME = 1 << 20    # longest blob name a record may claim
cdef uint32_t DB_VERSION = 1
# record kinds: 0 is a tensor, others are OBJ_* codes (base.pxi)
DEF DB_KIND_TENSOR = 0

cdef int64_t g_db_tmp_seq = 0


cdef inline void put_u32(string* s, uint32_t v) noexcept nogil:
    s.append(<const char*>&v, 4)     # little-endian hosts (docs/minidb.md)


cdef inline void put_u64(string* s, uint64_t v) noexcept nogil:
    s.append(<const char*>&v, 8)


cdef inline uint32_t get_u32(const char* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint64_t get_u64(const char* p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef string db_type_error(const string& t) noexcept nogil:
    cdef string m = cstr(b"db_type '")
    m.append(t)
    m.append(b"' is not supported (fastpipe reads and writes only 'minidb')")
    return m


cdef string db_full_path(const string& name, bint absolute) noexcept nogil:
    """Caffe2's rule: a db name is relative to the workspace's root folder
    (the process's current directory, "."), unless absolute_path is set."""
    cdef string p
    if absolute:
        return name
    p = cstr(b"./")
    p.append(name)
    return p


cdef string strip_to(const string& name, const string& prefix) noexcept nogil:
    """Caffe2's strip_prefix: drop everything up to and including the first
    occurrence of prefix (names without it are unchanged)."""
    cdef size_t k
    if prefix.size() == 0:
        return name
    k = name.find(prefix)
    if k == <size_t>-1:
        return name
    return name.substr(k + prefix.size())


# ---- writing -------------------------------------------------------------------

cdef void db_record_header(string* out, const string& name, uint32_t kind, uint32_t dtype,
                           int ndim, const int64_t* shape, uint64_t plen) noexcept nogil:
    cdef size_t start = out.size()
    cdef int i
    out.append(b"FPRC", 4)
    put_u32(out, kind)
    put_u32(out, dtype)
    put_u32(out, <uint32_t>ndim)
    put_u32(out, <uint32_t>name.size())
    put_u32(out, 0)
    put_u64(out, plen)
    for i in range(ndim):
        put_u64(out, <uint64_t>shape[i])
    out.append(name)
    put_u32(out, fp_crc32c(0, out.data() + start, out.size() - start))


cdef void db_encode_strings(Tensor* t, string* out) noexcept nogil:
    cdef string* ss = <string*>t.buf.data
    cdef int64_t i
    for i in range(t.size):
        put_u64(out, ss[i].size())
        out.append(ss[i])


# Payloads are checksummed in pieces right next to their write or read, so
# the CRC reads bytes still in cache instead of a second pass over memory.
DEF DB_PIECE = 1 << 20


cdef uint32_t db_write_crc(int fd, const char* p, int64_t n, int* e) noexcept nogil:
    """Write n bytes from p; returns their CRC-32C (*e: 0 or an errno)."""
    cdef uint32_t crc = 0
    cdef int64_t k
    e[0] = 0
    while n > 0:
        k = n if n < DB_PIECE else DB_PIECE
        crc = fp_crc32c(crc, p, k)
        e[0] = fp_db_write_all(fd, p, k)
        if e[0] != 0:
            return 0
        p += k
        n -= k
    return crc


cdef int db_save_blob(int fd, Blob* b, const string& key, string* pending,
                      string* err) noexcept nogil:
    """Write one record (pending: bytes not written yet -- the previous
    record's payload CRC -- sent with this record's header).  0, or -1 with
    err set (an errno failure: err starts with "\\x01")."""
    cdef Tensor snap
    cdef ObjHeader* h
    cdef string pay
    cdef const char* data = NULL
    cdef int64_t plen = 0
    cdef int e
    cdef int64_t zero_shape[1]
    if key.size() > DB_MAX_NAME:
        err[0] = cstr(b"blob name of ") + to_str(<int64_t>key.size()) + \
            cstr(b" bytes is longer than a minidb record allows (1 MiB)")
        return -1
    h = blob_get_obj(b)
    if h != NULL:
        if h.kind == OBJ_COUNTER:
            put_u64(&pay, <uint64_t>counter_get_state(h.impl))
        elif h.kind == OBJ_CURSOR:
            cursor_get_state(h.impl, &pay)
        elif h.kind == OBJ_TEXT_READER:
            if text_reader_get_state(h.impl, &pay, err) != 0:
                obj_decref(h)
                return -1
        else:
            err[0] = cstr(b"holds a ")
            err.append(OBJ_NAMES[h.kind])
            err.append(b", which cannot be saved (Save stores tensors, counters, dataset "
                       b"cursors and text file readers)")
            obj_decref(h)
            return -1
        db_record_header(pending, key, <uint32_t>h.kind, 0, 0, zero_shape, pay.size())
        obj_decref(h)
        data = pay.data()
        plen = pay.size()
        e = fp_db_write_all(fd, pending.data(), pending.size())
        if e == 0:
            e = fp_db_write_all(fd, data, plen)
        pending.clear()
        put_u32(pending, fp_crc32c(0, data, plen))
    else:
        tensor_snapshot(&b.t, &snap)
        if snap.dtype == DT_UNDEFINED:
            buf_decref(snap.buf)
            err[0] = cstr(b"has no value yet (nothing to save)")
            return -1
        if snap.dtype == DT_STRING:
            db_encode_strings(&snap, &pay)
            data = pay.data()
            plen = pay.size()
        else:
            data = <const char*>tdata(&snap)
            plen = tensor_nbytes(&snap)
        db_record_header(pending, key, DB_KIND_TENSOR, <uint32_t>snap.dtype, snap.ndim,
                         snap.shape, plen)
        e = fp_db_write_all(fd, pending.data(), pending.size())
        pending.clear()
        put_u32(pending, db_write_crc(fd, data, plen, &e) if e == 0 else 0)
        buf_decref(snap.buf)
    if e != 0:
        err[0] = cstr(b"\x01")
        err.append(fp_db_strerror(e))
        return -1
    return 0


cdef enum:   # Save argument positions (checked against the schema on import)
    SAVE_ABSOLUTE_PATH = 0
    SAVE_STRIP_PREFIX = 1
    SAVE_BLOB_NAME_OVERRIDES = 2
    SAVE_DB = 3
    SAVE_DB_TYPE = 4
kernel_args("Save", absolute_path=(SAVE_ABSOLUTE_PATH, "bool"),
            strip_prefix=(SAVE_STRIP_PREFIX, "str"),
            blob_name_overrides=(SAVE_BLOB_NAME_OVERRIDES, "strings"),
            db=(SAVE_DB, "str"), db_type=(SAVE_DB_TYPE, "str"))


cdef int k_save(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef vector[ArgVal]* a = &op.d.args
    cdef vector[string]* over = &a[0][SAVE_BLOB_NAME_OVERRIDES].strings
    cdef string path, tmp, err, hdr, msg
    cdef size_t i = 0, n = op.ins.size()
    cdef int fd, eno = 0, e
    cdef bint failed = False
    if a[0][SAVE_DB_TYPE].s != b"minidb":
        return op_fails(op, ctx, E_RUNTIME, db_type_error(a[0][SAVE_DB_TYPE].s))
    path = db_full_path(a[0][SAVE_DB].s, a[0][SAVE_ABSOLUTE_PATH].i != 0)
    tmp = path
    tmp.append(b".tmp.")
    tmp.append(to_str(fp_getpid()))
    tmp.append(b".")
    tmp.append(to_str(fp_fetch_add(&g_db_tmp_seq, 1)))
    fd = fp_db_open_new(tmp.c_str(), &eno)
    if fd < 0:
        msg = cstr(b"cannot create db '")
        msg.append(path)
        msg.append(b"' (temporary file '")
        msg.append(tmp)
        msg.append(b"'): ")
        msg.append(fp_db_strerror(eno))
        return op_fails(op, ctx, E_RUNTIME, msg)
    hdr.append(b"FPMINIDB", 8)
    put_u32(&hdr, DB_VERSION)
    put_u32(&hdr, 0)
    put_u64(&hdr, n)
    put_u32(&hdr, 0)
    put_u32(&hdr, fp_crc32c(0, hdr.data(), hdr.size()))
    for i in range(n):
        if db_save_blob(fd, op.ins[i],
                        strip_to(over[0][i] if over.size() else op.d.inputs[i],
                                 a[0][SAVE_STRIP_PREFIX].s), &hdr, &err) != 0:
            failed = True
            break
    if not failed:
        e = fp_db_write_all(fd, hdr.data(), hdr.size())     # the last payload CRC
        if e != 0:
            err = cstr(b"\x01") + fp_db_strerror(e)
            failed = True
    if failed:
        fp_close(fd)
        fp_unlink(tmp.c_str())
        msg = cstr(b"db '")
        msg.append(path)
        if err.size() and err[0] == b'\x01':
            msg.append(b"': writing failed: ")
            msg.append(err.substr(1))
        else:
            msg.append(b"': input ")
            msg.append(to_str(i))
            msg.append(b" ('")
            msg.append(op.d.inputs[i])
            msg.append(b"') ")
            msg.append(err)
        return op_fails(op, ctx, E_RUNTIME, msg)
    e = fp_db_finish(fd)
    if e == 0:
        e = fp_db_rename(tmp.c_str(), path.c_str())
    if e != 0:
        fp_unlink(tmp.c_str())
        msg = cstr(b"db '")
        msg.append(path)
        msg.append(b"': writing failed: ")
        msg.append(fp_db_strerror(e))
        return op_fails(op, ctx, E_RUNTIME, msg)
    fp_db_sync_dir(path)
    return 0


# ---- reading -------------------------------------------------------------------

cdef cppclass DbReader:
    int fd
    string path
    uint64_t nrec
    int64_t rec             # index of the record being read (errors name it)
    # the current record's header
    uint32_t kind
    uint32_t dtype
    int ndim
    int64_t shape[MAX_DIMS]
    uint64_t plen
    string name


cdef int db_fail(DbReader* r, string* err, const char* what) noexcept nogil:
    err[0] = cstr(b"db '")
    err.append(r.path)
    err.append(b"'")
    if r.rec >= 0:
        err.append(b", record ")
        err.append(to_str(r.rec))
        if r.name.size():
            err.append(b" ('")
            err.append(r.name)
            err.append(b"')")
    err.append(b": ")
    err.append(what)
    return -1


cdef int db_read_exact(DbReader* r, void* p, int64_t n, string* err) noexcept nogil:
    cdef int eno = 0
    cdef int64_t got = fp_db_read_all(r.fd, p, n, &eno)
    cdef string m
    if got < 0:
        m = cstr(b"read failed: ") + fp_db_strerror(eno)
        return db_fail(r, err, m.c_str())
    if got < n:
        return db_fail(r, err, b"the file is truncated (it ends inside this record)"
                       if r.rec >= 0 else b"the file is truncated (shorter than its header)")
    return 0


cdef int db_read_crc(DbReader* r, char* p, int64_t n, uint32_t* crc, string* err) noexcept nogil:
    """db_read_exact that also returns the bytes' CRC-32C in *crc."""
    cdef int64_t k
    crc[0] = 0
    while n > 0:
        k = n if n < DB_PIECE else DB_PIECE
        if db_read_exact(r, p, k, err) != 0:
            return -1
        crc[0] = fp_crc32c(crc[0], p, k)
        p += k
        n -= k
    return 0


cdef int db_open(DbReader* r, const string& path, string* err) noexcept nogil:
    """Open and check the file header.  0, or -1 with err set (r.fd is -1
    unless the file is open)."""
    cdef char h[DB_HEADER_LEN]
    cdef int eno = 0
    cdef string m
    r.path = path
    r.rec = -1
    r.fd = fp_db_open_read(path.c_str(), &eno)
    if r.fd < 0:
        if eno == ENOENT:
            return db_fail(r, err, b"no such file (the db does not exist)")
        m = cstr(b"cannot open: ") + fp_db_strerror(eno)
        return db_fail(r, err, m.c_str())
    if db_read_exact(r, h, DB_HEADER_LEN, err) != 0:
        return -1
    if memcmp(h, b"FPMINIDB", 8) != 0:
        return db_fail(r, err, b"not a fastpipe minidb file (bad magic; docs/minidb.md)")
    if get_u32(h + 28) != fp_crc32c(0, h, 28):
        return db_fail(r, err, b"the file header is corrupt (checksum mismatch)")
    if get_u32(h + 8) != DB_VERSION:
        m = cstr(b"format version ") + to_str(get_u32(h + 8)) + \
            cstr(b" is not supported (this fastpipe reads version ") + to_str(DB_VERSION) + cstr(b")")
        return db_fail(r, err, m.c_str())
    if get_u32(h + 12) != 0:
        return db_fail(r, err, b"the file uses format flags this fastpipe does not know")
    r.nrec = get_u64(h + 16)
    return 0


cdef int db_next_header(DbReader* r, string* err) noexcept nogil:
    """Read the header of record r.rec (already advanced)."""
    cdef char f[DB_REC_FIXED]
    cdef string rest
    cdef uint32_t nlen, crc
    cdef int i
    cdef int64_t left
    r.name.clear()
    if db_read_exact(r, f, DB_REC_FIXED, err) != 0:
        return -1
    if memcmp(f, b"FPRC", 4) != 0:
        return db_fail(r, err, b"the file is corrupt (bad record magic)")
    r.kind = get_u32(f + 4)
    r.dtype = get_u32(f + 8)
    r.ndim = <int>get_u32(f + 12)
    nlen = get_u32(f + 16)
    r.plen = get_u64(f + 24)
    if r.ndim < 0 or r.ndim > MAX_DIMS or nlen > DB_MAX_NAME:
        return db_fail(r, err, b"the file is corrupt (record header out of range)")
    rest.resize(8 * r.ndim + nlen + 4)
    if db_read_exact(r, &rest[0], rest.size(), err) != 0:
        return -1
    crc = fp_crc32c(fp_crc32c(0, f, DB_REC_FIXED), rest.data(), rest.size() - 4)
    if crc != get_u32(rest.data() + rest.size() - 4):
        return db_fail(r, err, b"the file is corrupt (record header checksum mismatch)")
    for i in range(r.ndim):
        r.shape[i] = <int64_t>get_u64(rest.data() + 8 * i)
    r.name = rest.substr(8 * r.ndim, nlen)
    # a payload (and its CRC) must fit in what is left of the file: a corrupt
    # length is an error here, before anything is allocated for it
    left = fp_db_left(r.fd)
    if r.plen > (<uint64_t>1 << 62) or (left >= 0 and <int64_t>r.plen + 4 > left):
        return db_fail(r, err, b"the file is corrupt or truncated (record payload longer than "
                       b"the rest of the file)")
    return 0


cdef int db_payload_crc(DbReader* r, uint32_t crc, string* err) noexcept nogil:
    cdef char c[4]
    if db_read_exact(r, c, 4, err) != 0:
        return -1
    if get_u32(c) != crc:
        return db_fail(r, err, b"the file is corrupt (payload checksum mismatch)")
    return 0


cdef inline void tensor_take(Tensor* dst, Tensor* src) noexcept nogil:
    """dst takes src's content under dst's lock; src gets dst's old content
    (for the caller to clear)."""
    cdef Tensor old
    cdef int64_t* lp = dst.lockp
    tensor_lock(dst)
    old = dst[0]
    dst[0] = src[0]
    dst.lockp = lp
    tensor_unlock(dst)
    src[0] = old
    src.lockp = NULL


cdef int db_new_mapped_tensor(Tensor* t, int dt, int ndim, const int64_t* shape) noexcept nogil:
    """Make the empty tensor t (no lock) a numeric tensor of this shape over
    a new mapped buffer.  0, -1 out of memory, -3 a bad shape."""
    cdef int64_t size = 1
    cdef int i
    cdef Buffer* b
    for i in range(ndim):
        if shape[i] < 0 or fp_mul_overflow(size, shape[i], &size) or size > MAX_ELEMENTS:
            return -3
    b = buf_new_mapped(size * dtype_itemsize(dt))
    if b == NULL:
        return -1
    t.buf = b
    t.dtype = dt
    t.ndim = ndim
    for i in range(ndim):
        t.shape[i] = shape[i]
    t.size = size
    return 0


cdef int db_load_tensor(DbReader* r, Blob* target, string* err) noexcept nogil:
    cdef Tensor tmp
    cdef string pay
    cdef string* ds
    cdef int64_t i, k, ln
    cdef uint32_t crc
    cdef int rc
    cdef int dt = <int>r.dtype
    if dt == DT_UNDEFINED or dtype_name(dt) == dtype_name(DT_UNDEFINED):
        return db_fail(r, err, b"the file is corrupt (unknown dtype)")
    tensor_init(&tmp)
    if dt != DT_STRING and <int64_t>r.plen >= BUF_MAP_MIN:
        # a large tensor gets its own mapping with transparent huge pages
        # requested (buf_new_mapped), as numpy does for large arrays: filling
        # fresh memory then faults once per 2 MiB instead of once per 4 KiB
        rc = db_new_mapped_tensor(&tmp, dt, r.ndim, r.shape)
    else:
        rc = tensor_reshape(&tmp, dt, r.ndim, r.shape)
    if rc == -1:
        return db_fail(r, err, b"out of memory")
    if rc != 0:
        return db_fail(r, err, b"the file is corrupt (bad shape)")
    if dt != DT_STRING:
        if <int64_t>r.plen != tensor_nbytes(&tmp):
            tensor_clear(&tmp)
            return db_fail(r, err, b"the file is corrupt (payload length does not match the shape)")
        if db_read_crc(r, <char*>tdata(&tmp), r.plen, &crc, err) != 0:
            tensor_clear(&tmp)
            return -1
    else:
        pay.resize(r.plen)
        if r.plen and db_read_exact(r, &pay[0], r.plen, err) != 0:
            tensor_clear(&tmp)
            return -1
        crc = fp_crc32c(0, pay.data(), pay.size())
    if db_payload_crc(r, crc, err) != 0:
        tensor_clear(&tmp)
        return -1
    if dt == DT_STRING:
        ds = <string*>tmp.buf.data
        k = 0
        for i in range(tmp.size):
            if k + 8 > <int64_t>pay.size():
                tensor_clear(&tmp)
                return db_fail(r, err, b"the file is corrupt (string payload too short)")
            ln = <int64_t>get_u64(pay.data() + k)
            k += 8
            if ln < 0 or ln > <int64_t>pay.size() - k:
                tensor_clear(&tmp)
                return db_fail(r, err, b"the file is corrupt (string payload too short)")
            ds[i].assign(pay.data() + k, ln)
            k += ln
        if k != <int64_t>pay.size():
            tensor_clear(&tmp)
            return db_fail(r, err, b"the file is corrupt (string payload too long)")
    tensor_take(blob_out(target), &tmp)
    tensor_clear(&tmp)
    return 0


cdef int db_load_object(DbReader* r, Blob* target, string* err) noexcept nogil:
    cdef string pay
    cdef ObjHeader* h = NULL
    cdef string why
    if r.plen > (1 << 30):
        return db_fail(r, err, b"the file is corrupt (object state too large)")
    pay.resize(r.plen)
    if r.plen and db_read_exact(r, &pay[0], r.plen, err) != 0:
        return -1
    if db_payload_crc(r, fp_crc32c(0, pay.data(), pay.size()), err) != 0:
        return -1
    if r.kind == OBJ_COUNTER:
        if pay.size() != 8:
            return db_fail(r, err, b"the file is corrupt (counter state)")
        h = counter_from_state(<int64_t>get_u64(pay.data()))
        if h == NULL:
            return db_fail(r, err, b"out of memory")
    elif r.kind == OBJ_CURSOR:
        if cursor_from_state(pay.data(), pay.size(), &h, &why) != 0:
            why = cstr(b"cursor state: ") + why
            return db_fail(r, err, why.c_str())
    elif r.kind == OBJ_TEXT_READER:
        if text_reader_from_state(pay.data(), pay.size(), &h, &why) != 0:
            why = cstr(b"text file reader state: ") + why
            return db_fail(r, err, why.c_str())
    else:
        return db_fail(r, err, b"the file is corrupt (unknown record kind)")
    blob_set_obj(target, h)
    return 0


cdef enum:   # Load argument positions (checked against the schema on import)
    LOAD_ABSOLUTE_PATH = 0
    LOAD_ADD_PREFIX = 1
    LOAD_STRIP_PREFIX = 2
    LOAD_DB = 3
    LOAD_DBS = 4
    LOAD_DB_TYPE = 5
    LOAD_KEEP_DEVICE = 6
    LOAD_LOAD_ALL = 7
    LOAD_ALLOW_INCOMPLETE = 8
    LOAD_SOURCE_BLOB_NAMES = 9
kernel_args("Load", absolute_path=(LOAD_ABSOLUTE_PATH, "bool"),
            add_prefix=(LOAD_ADD_PREFIX, "str"), strip_prefix=(LOAD_STRIP_PREFIX, "str"),
            db=(LOAD_DB, "str"), dbs=(LOAD_DBS, "strings"), db_type=(LOAD_DB_TYPE, "str"),
            keep_device=(LOAD_KEEP_DEVICE, "bool"), load_all=(LOAD_LOAD_ALL, "bool"),
            allow_incomplete=(LOAD_ALLOW_INCOMPLETE, "bool"),
            source_blob_names=(LOAD_SOURCE_BLOB_NAMES, "strings"))


cdef int load_from_db(OpInst* op, DbReader* r, int db_index, bint load_all,
                      unordered_map[string, int]* want, unordered_map[string, int]* seen,
                      vector[string]* dbs, int64_t* total, string* err) noexcept nogil:
    """Read the records of one open db into their blobs.  0, or -1."""
    cdef vector[ArgVal]* a = &op.d.args
    cdef string key
    cdef Blob* target
    cdef int e
    cdef uint64_t i
    for i in range(r.nrec):
        r.rec = <int64_t>i
        if db_next_header(r, err) != 0:
            return -1
        key = a[0][LOAD_ADD_PREFIX].s + strip_to(r.name, a[0][LOAD_STRIP_PREFIX].s)
        if load_all:
            target = ws_create(op.ws, key)
        else:
            it = want.find(key)
            if it == want.end():
                e = fp_db_skip(r.fd, <int64_t>r.plen + 4)
                if e != 0:
                    return db_fail(r, err, (cstr(b"seek failed: ") + fp_db_strerror(e)).c_str())
                continue
            target = op.outs[deref(it).second]
        st = seen.find(key)
        if st != seen.end() and deref(st).second != db_index:
            err[0] = cstr(b"blob '") + key + cstr(b"' is in two dbs: '") + \
                dbs[0][deref(st).second] + cstr(b"' and '") + dbs[0][db_index] + cstr(b"'")
            return -1
        if r.kind == DB_KIND_TENSOR:
            if db_load_tensor(r, target, err) != 0:
                return -1
        elif db_load_object(r, target, err) != 0:
            return -1
        if st == seen.end():
            seen[0][key] = db_index
            total[0] += 1
        if not load_all and total[0] == <int64_t>op.outs.size():
            break
    return 0


cdef int k_load(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef vector[ArgVal]* a = &op.d.args
    cdef vector[string] dbs
    cdef vector[string]* src = &a[0][LOAD_SOURCE_BLOB_NAMES].strings
    cdef unordered_map[string, int] want
    cdef unordered_map[string, int] seen
    cdef bint load_all = a[0][LOAD_LOAD_ALL].i != 0
    cdef bint absolute = a[0][LOAD_ABSOLUTE_PATH].i != 0
    cdef DbReader r
    cdef string err, msg
    cdef int64_t total = 0
    cdef size_t i
    cdef int rc
    if a[0][LOAD_DB_TYPE].s != b"minidb":
        return op_fails(op, ctx, E_RUNTIME, db_type_error(a[0][LOAD_DB_TYPE].s))
    if a[0][LOAD_DBS].strings.size():
        for i in range(a[0][LOAD_DBS].strings.size()):
            dbs.push_back(db_full_path(a[0][LOAD_DBS].strings[i], absolute))
    else:
        dbs.push_back(db_full_path(a[0][LOAD_DB].s, absolute))
    if not load_all:
        for i in range(op.outs.size()):
            want[src[0][i] if src.size() else op.d.outputs[i]] = <int>i
    for i in range(dbs.size()):
        rc = db_open(&r, dbs[i], &err)
        if rc == 0:
            rc = load_from_db(op, &r, <int>i, load_all, &want, &seen, &dbs, &total, &err)
        if r.fd >= 0:
            fp_close(r.fd)
        if rc != 0:
            return op_fails(op, ctx, E_RUNTIME, err)
        if not load_all and total == <int64_t>op.outs.size():
            return 0
    if load_all:
        for i in range(op.outs.size()):
            if seen.find(op.d.outputs[i]) == seen.end():
                msg = cstr(b"output blob '") + op.d.outputs[i] + \
                    cstr(b"' is not in the db(s) (load_all=1)")
                return op_fails(op, ctx, E_RUNTIME, msg)
        return 0
    if total < <int64_t>op.outs.size() and not a[0][LOAD_ALLOW_INCOMPLETE].i:
        msg = cstr(b"expected to load ") + to_str(op.outs.size()) + cstr(b" blobs, got ") + \
            to_str(total) + cstr(b" (not in the db(s):")
        for i in range(op.outs.size()):
            if seen.find(src[0][i] if src.size() else op.d.outputs[i]) == seen.end():
                msg.append(b" '")
                msg.append(src[0][i] if src.size() else op.d.outputs[i])
                msg.append(b"'")
        msg.append(b"; allow_incomplete=1 loads what is there)")
        return op_fails(op, ctx, E_RUNTIME, msg)
    return 0


# ---- DBExists, GetAllBlobNames -------------------------------------------------

cdef enum:   # DBExists argument positions
    DBE_ABSOLUTE_PATH = 0
    DBE_DB_NAME = 1
    DBE_DB_TYPE = 2
kernel_args("DBExists", absolute_path=(DBE_ABSOLUTE_PATH, "bool"),
            db_name=(DBE_DB_NAME, "str"), db_type=(DBE_DB_TYPE, "str"))


cdef int k_db_exists(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef vector[ArgVal]* a = &op.d.args
    cdef string path
    if a[0][DBE_DB_TYPE].s != b"minidb":
        return op_fails(op, ctx, E_RUNTIME, db_type_error(a[0][DBE_DB_TYPE].s))
    path = db_full_path(a[0][DBE_DB_NAME].s, a[0][DBE_ABSOLUTE_PATH].i != 0)
    return scalar_out_bool(op, ctx, 0, fp_db_is_file(path.c_str()) != 0)


cdef enum:   # GetAllBlobNames argument positions
    GABN_INCLUDE_SHARED = 0
kernel_args("GetAllBlobNames", include_shared=(GABN_INCLUDE_SHARED, "bool"))


cdef extern from "<set>" namespace "std" nogil:
    cdef cppclass fp_str_set "std::set<std::string>":
        cppclass iterator:
            string& operator*()
            iterator operator++()
            bint operator!=(iterator)
        void insert(const string&)
        iterator begin()
        iterator end()
        size_t size()


cdef int k_get_all_blob_names(OpInst* op, RunCtx* ctx) noexcept nogil:
    """The names of the blobs the op's workspace sees (include_shared: its
    parents' too; else only its own), sorted."""
    cdef fp_str_set names
    cdef WS* w = op.ws
    cdef Tensor* out
    cdef string* ds
    cdef int64_t n, i
    while w != NULL:
        fp_lock(&w.lock)
        for kv in w.blobs:
            names.insert(kv.first)
        fp_unlock(&w.lock)
        if not op.d.args[GABN_INCLUDE_SHARED].i:
            break
        w = w.parent
    n = <int64_t>names.size()
    out = blob_out(op.outs[0])
    if out_shape(op, ctx, out, DT_STRING, 1, &n) != 0:
        return -1
    ds = <string*>tdata(out)
    i = 0
    it = names.begin()
    while it != names.end():
        ds[i] = deref(it)
        i += 1
        inc(it)
    return 0
