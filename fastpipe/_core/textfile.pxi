# Text file readers: CreateTextFileReader and TextFileReaderRead (the ops of
# fastpipe.text_file_reader.TextFileReader, Caffe2's TSV reader).
#
# A reader (OBJ_TEXT_READER) owns the open file, a block buffer the file is
# read into with large read()s, and the position: pass number and lines
# handed out.  Every op reading it -- one per runtime instance of a pipe --
# takes the reader's mutex only to *hand out lines*: it scans the buffer for
# up to batch_size line ends (memchr), copies those bytes into its own scratch
# chunk (memcpy class), advances, and unlocks.  Parsing the chunk into the
# outputs happens after the lock is released, so N instances parse in
# parallel and every line is handed out exactly once per pass.
#
# Lines end in '\n' (a '\r' before it is dropped: CRLF files read the same);
# a last line without a line end is a line.  Fields are separated by '\t'
# and are not unescaped (Caffe2's reader is created without an escape
# character).  Numbers are parsed in the C locale with std::from_chars;
# the field must be the whole number (no spaces), a leading '+' is allowed.
# A malformed line fails the op with the file, line number (1-based, per
# pass) and field.

cdef extern from *:
    """
    #include <charconv>
    #include <limits>
    #include <system_error>
    #include <cstring>
    #include <cstdint>
    #include <cstdlib>
    #include <cmath>
    #include <string>
    #include <fcntl.h>
    #include <unistd.h>
    #include <sys/stat.h>
    #include <errno.h>

    enum { FP_TSV_OK = 0, FP_TSV_NFIELDS = 1, FP_TSV_NOTNUM = 2, FP_TSV_RANGE = 3 };

    typedef struct {
        int64_t line_off;   /* byte offset of the bad line in the chunk */
        int64_t tok_off;    /* the bad field's bytes (NOTNUM / RANGE) */
        int64_t tok_len;
        int field;          /* 0-based bad field; NFIELDS: the number found */
    } fp_tsv_err;

    /* Doubles at or above this round to inf as float32 (2^128 - 2^103, the
       midpoint between FLT_MAX and 2^128): they overflow a float32 field. */
    static const double FP_TSV_F32_OVER = 3.4028235677973366e38;

    static inline const char* fp_tsv_skip_plus(const char* b, const char* e) {
        /* from_chars takes no leading '+'; Python's int() and float() do */
        if (e - b > 1 && b[0] == '+' && b[1] != '-' && b[1] != '+') return b + 1;
        return b;
    }

    static inline int fp_tsv_int(const char* b, const char* e, int64_t* out) {
        const char* p = fp_tsv_skip_plus(b, e);
        if (p == e) return FP_TSV_NOTNUM;
        std::from_chars_result r = std::from_chars(p, e, *out, 10);
        if (r.ec == std::errc::invalid_argument || r.ptr != e) return FP_TSV_NOTNUM;
        if (r.ec == std::errc::result_out_of_range) return FP_TSV_RANGE;
        return FP_TSV_OK;
    }

    /* An integer field of a type narrower than int64, range-checked. */
    template <typename T>
    static inline int fp_tsv_small_int(const char* b, const char* e, T* out) {
        int64_t v = 0;
        int rc = fp_tsv_int(b, e, &v);
        if (rc != FP_TSV_OK) return rc;
        if (v < (int64_t)std::numeric_limits<T>::min() ||
            v > (int64_t)std::numeric_limits<T>::max()) return FP_TSV_RANGE;
        *out = (T)v;
        return FP_TSV_OK;
    }

    static inline int fp_tsv_double(const char* b, const char* e, double* out) {
        const char* p = fp_tsv_skip_plus(b, e);
        if (p == e) return FP_TSV_NOTNUM;
        std::from_chars_result r = std::from_chars(p, e, *out);
        if (r.ec == std::errc::invalid_argument || r.ptr != e) return FP_TSV_NOTNUM;
        if (r.ec == std::errc::result_out_of_range) {
            /* overflow or underflow: strtod tells which (the token is a
               valid number, so the locale's decimal point cannot matter
               unless it is not '.': then report the range error) */
            std::string tok(p, e - p);
            errno = 0;
            double d = std::strtod(tok.c_str(), nullptr);
            if (std::isinf(d)) return FP_TSV_RANGE;
            *out = d;           /* underflow: 0 or a subnormal, as Python */
        }
        return FP_TSV_OK;
    }

    /* Parse nlines lines (each ends in '\\n') of chunk into outs[f], the data
       of field f's output (types[f] a DataType code).  0, or a FP_TSV_* code
       with *err saying where. */
    static int fp_tsv_parse(const char* chunk, int64_t length, int64_t nlines, int nf,
                            const int* types, void* const* outs, fp_tsv_err* err) noexcept {
        const char* p = chunk;
        const char* end = chunk + length;
        for (int64_t i = 0; i < nlines; i++) {
            const char* nl = (const char*)memchr(p, '\\n', end - p);
            if (nl == nullptr) nl = end;      /* cannot happen: every line has one */
            const char* le = nl;
            if (le > p && le[-1] == '\\r') le--;
            const char* fb = p;
            for (int f = 0; f < nf; f++) {
                const char* fe = (const char*)memchr(fb, '\\t', le - fb);
                if (f + 1 < nf) {
                    if (fe == nullptr) {
                        err->line_off = p - chunk; err->field = f + 1;
                        err->tok_off = 0; err->tok_len = 0;
                        return FP_TSV_NFIELDS;
                    }
                } else {
                    if (fe != nullptr) {
                        int found = 1;
                        for (const char* q = p; q < le; q++) found += (*q == '\\t');
                        err->line_off = p - chunk; err->field = found;
                        err->tok_off = 0; err->tok_len = 0;
                        return FP_TSV_NFIELDS;
                    }
                    fe = le;
                }
                int rc = FP_TSV_OK;
                switch (types[f]) {
                case 2:     /* INT32 */
                    rc = fp_tsv_small_int<int32_t>(fb, fe, &((int32_t*)outs[f])[i]);
                    break;
                case 7:     /* INT8 */
                    rc = fp_tsv_small_int<int8_t>(fb, fe, &((int8_t*)outs[f])[i]);
                    break;
                case 9:     /* INT16 */
                    rc = fp_tsv_small_int<int16_t>(fb, fe, &((int16_t*)outs[f])[i]);
                    break;
                case 6:     /* UINT8 */
                    rc = fp_tsv_small_int<uint8_t>(fb, fe, &((uint8_t*)outs[f])[i]);
                    break;
                case 8:     /* UINT16 */
                    rc = fp_tsv_small_int<uint16_t>(fb, fe, &((uint16_t*)outs[f])[i]);
                    break;
                case 10:    /* INT64 */
                    rc = fp_tsv_int(fb, fe, &((int64_t*)outs[f])[i]);
                    break;
                case 1: {   /* FLOAT: through double, as float(s) then float32 */
                    double d = 0;
                    rc = fp_tsv_double(fb, fe, &d);
                    if (rc == FP_TSV_OK && std::isfinite(d) && std::fabs(d) >= FP_TSV_F32_OVER)
                        rc = FP_TSV_RANGE;
                    if (rc == FP_TSV_OK) ((float*)outs[f])[i] = (float)d;
                    break;
                }
                case 13:    /* DOUBLE */
                    rc = fp_tsv_double(fb, fe, &((double*)outs[f])[i]);
                    break;
                default:    /* STRING (CreateTextFileReader admits no other type) */
                    ((std::string*)outs[f])[i].assign(fb, (size_t)(fe - fb));
                    break;
                }
                if (rc != FP_TSV_OK) {
                    err->line_off = p - chunk; err->field = f;
                    err->tok_off = fb - chunk; err->tok_len = fe - fb;
                    return rc;
                }
                fb = fe + 1;
            }
            p = nl + 1;
        }
        return FP_TSV_OK;
    }

    /* Open path for reading; -1 with *err set when it cannot be read. */
    static int fp_tsv_open(const char* path, std::string* err) noexcept {
        int fd;
        do { fd = open(path, O_RDONLY | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
        if (fd < 0) { *err = strerror(errno); return -1; }
        struct stat sb;
        if (fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            close(fd);
            *err = "it is a directory";
            return -1;
        }
    #ifdef POSIX_FADV_SEQUENTIAL
        posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    #endif
        return fd;
    }

    /* read() up to n bytes (retrying EINTR): bytes read, 0 at end of file,
       -1 with *eno set on an error. */
    static int64_t fp_tsv_read(int fd, char* buf, int64_t n, int* eno) noexcept {
        for (;;) {
            ssize_t k = read(fd, buf, (size_t)n);
            if (k >= 0) return (int64_t)k;
            if (errno != EINTR) { *eno = errno; return -1; }
        }
    }

    static int fp_tsv_rewind(int fd) noexcept {
        return lseek(fd, 0, SEEK_SET) == (off_t)-1 ? errno : 0;
    }

    static void fp_tsv_close(int fd) noexcept { if (fd >= 0) close(fd); }

    static std::string fp_tsv_strerror(int e) { return std::string(strerror(e)); }
    """
    ctypedef struct fp_tsv_err:
        int64_t line_off
        int64_t tok_off
        int64_t tok_len
        int field
    enum:
        FP_TSV_OK
        FP_TSV_NFIELDS
        FP_TSV_NOTNUM
        FP_TSV_RANGE
    int fp_tsv_parse(const char* chunk, int64_t length, int64_t nlines, int nf,
                     const int* types, void** outs, fp_tsv_err* err) noexcept nogil
    int fp_tsv_open(const char* path, string* err) noexcept nogil
    int64_t fp_tsv_read(int fd, char* buf, int64_t n, int* eno) noexcept nogil
    int fp_tsv_rewind(int fd) noexcept nogil
    void fp_tsv_close(int fd) noexcept nogil
    string fp_tsv_strerror(int e) noexcept nogil

from libc.string cimport memchr, memmove
from libc.stdio cimport SEEK_CUR, SEEK_SET
from posix.unistd cimport lseek


# The reader's block: read() fills it in pieces of up to this size.  It grows
# (doubling) only for a line longer than the block.
cdef int64_t TF_BLOCK = 4 << 20


cdef cppclass TextReader:
    # immutable after CreateTextFileReader
    string filename
    vector[int] types           # DataType per field
    vector[string] names        # field names for messages (may be empty)
    int64_t num_passes
    fp_mutex mu                 # protects every field below
    int fd
    char* buf                   # cap bytes; [beg, end) read but not handed out
    int64_t cap
    int64_t beg
    int64_t end
    bint at_eof                 # this pass's read() returned 0
    int64_t pass_no             # 0-based; == num_passes: every pass is done
    int64_t line_no             # lines handed out in this pass
    int64_t resume_run          # the resumed run that restarted it (exact resume)


cdef void text_reader_destroy(void* p) noexcept nogil:
    cdef TextReader* r = <TextReader*>p
    fp_tsv_close(r.fd)
    free(r.buf)
    fp_mutex_destroy(&r.mu)
    del r


# Save/Load (savedb.pxi): a reader's state is its description (file name,
# field types and names, num_passes) and its position: pass, lines handed out
# in the pass, and the byte offset of the next line not handed out (the fd's
# offset minus the bytes still buffered).  Loading reopens the file by name
# and seeks there, so the lines handed out after the load are exactly the
# ones the saved reader had not handed out (for the same file).
cdef inline void _tr_put64(string* out, int64_t v) noexcept nogil:
    out.append(<const char*>&v, 8)


cdef inline void _tr_putstr(string* out, const string& v) noexcept nogil:
    cdef uint32_t n = <uint32_t>v.size()
    out.append(<const char*>&n, 4)
    out.append(v)


cdef int text_reader_get_state(void* impl, string* out, string* err) noexcept nogil:
    cdef TextReader* r = <TextReader*>impl
    cdef int64_t off
    cdef uint32_t n
    cdef size_t i
    fp_lock(&r.mu)
    off = lseek(r.fd, 0, SEEK_CUR)
    off = off - (r.end - r.beg) if off >= 0 else -1
    _tr_putstr(out, r.filename)
    n = <uint32_t>r.types.size()
    out.append(<const char*>&n, 4)
    for i in range(r.types.size()):
        out.append(<const char*>&r.types[i], 4)
    n = <uint32_t>r.names.size()
    out.append(<const char*>&n, 4)
    for i in range(r.names.size()):
        _tr_putstr(out, r.names[i])
    _tr_put64(out, r.num_passes)
    _tr_put64(out, r.pass_no)
    _tr_put64(out, r.line_no)
    _tr_put64(out, off)
    fp_unlock(&r.mu)
    if off < 0:
        err[0] = cstr(b"cannot tell the position in file '") + r.filename + cstr(b"'")
        return -1
    return 0


cdef int _tr_getstr(const char* p, size_t len, size_t* pos, string* v) noexcept nogil:
    cdef uint32_t n
    if len - pos[0] < 4:
        return -1
    memcpy(&n, p + pos[0], 4)
    pos[0] += 4
    if len - pos[0] < n:
        return -1
    v.assign(p + pos[0], n)
    pos[0] += n
    return 0


cdef int text_reader_from_state(const char* p, size_t len, ObjHeader** out,
                                string* err) noexcept nogil:
    """A new reader (the file reopened, positioned) from
    text_reader_get_state's bytes.  0, or -1 with err."""
    cdef TextReader* r
    cdef string fname, nm
    cdef vector[int] types
    cdef vector[string] names
    cdef int64_t v[4]
    cdef uint32_t n, k
    cdef int t
    cdef size_t pos = 0
    cdef int fd
    if _tr_getstr(p, len, &pos, &fname) != 0 or len - pos < 4:
        err[0] = cstr(b"too short")
        return -1
    memcpy(&n, p + pos, 4)
    pos += 4
    if len - pos < <size_t>n * 4:
        err[0] = cstr(b"too short")
        return -1
    for k in range(n):
        memcpy(&t, p + pos, 4)
        pos += 4
        if not (t == 1 or t == 2 or t == 4 or t == 6 or t == 7 or t == 8 or t == 9 or
                t == 10 or t == 13):     # TEXT_FIELD_TYPES (_opschema): what fp_tsv_parse reads
            err[0] = cstr(b"field type ") + to_str(t) + cstr(b" is not one a text reader reads")
            return -1
        types.push_back(t)
    if len - pos < 4:
        err[0] = cstr(b"too short")
        return -1
    memcpy(&n, p + pos, 4)
    pos += 4
    for k in range(n):
        if _tr_getstr(p, len, &pos, &nm) != 0:
            err[0] = cstr(b"too short")
            return -1
        names.push_back(nm)
    if len - pos != 32:
        err[0] = cstr(b"bad length")
        return -1
    memcpy(v, p + pos, 32)
    if types.size() == 0 or (names.size() and names.size() != types.size()) or \
            v[0] < 0 or v[1] < 0 or v[2] < 0 or v[3] < 0:
        err[0] = cstr(b"inconsistent state (fields, passes, line or offset out of range)")
        return -1
    fd = fp_tsv_open(fname.c_str(), err)
    if fd < 0:
        err[0] = cstr(b"cannot reopen file '") + fname + cstr(b"': ") + err[0]
        return -1
    if v[3] < 0 or lseek(fd, v[3], SEEK_SET) != v[3]:
        fp_tsv_close(fd)
        err[0] = cstr(b"cannot seek file '") + fname + cstr(b"' to ") + to_str(v[3])
        return -1
    r = new TextReader()
    r.filename = fname
    r.types = types
    r.names = names
    r.num_passes = v[0]
    r.pass_no = v[1]
    r.line_no = v[2]
    r.fd = fd
    r.buf = <char*>malloc(TF_BLOCK)
    r.cap = TF_BLOCK
    r.beg = 0
    r.end = 0
    r.at_eof = False
    fp_mutex_init(&r.mu)
    if r.buf == NULL:
        text_reader_destroy(r)
        err[0] = cstr(b"out of memory")
        return -1
    out[0] = obj_new(OBJ_TEXT_READER, r, text_reader_destroy)
    if out[0] == NULL:
        err[0] = cstr(b"out of memory")
        return -1
    return 0


# Per read op (one per runtime instance): the lines it was handed, copied out
# of the reader's block, and where each pass's lines start (for messages).
# Reused across batches and runs: a steady read loop does not allocate.
cdef cppclass TfState:
    char* chunk
    int64_t cap
    int64_t length
    int64_t nlines
    vector[int64_t] seg_off     # byte offset in chunk where a segment starts
    vector[int64_t] seg_line    # 1-based line number of its first line
    vector[int64_t] seg_pass    # 0-based pass of the segment
    vector[void*] outs          # per field: output data (scratch)
    int64_t trk_run             # provenance tracking: run whose source id is cached
    int64_t trk_src             # that source id (-1: untracked)


cdef enum:   # argument positions (checked against the schemas on import)
    CTFR_FILENAME = 0               # CreateTextFileReader
    CTFR_NUM_PASSES = 1
    CTFR_FIELD_TYPES = 2
    CTFR_FIELD_NAMES = 3
    TFRR_BATCH_SIZE = 0             # TextFileReaderRead
kernel_args("CreateTextFileReader", filename=(CTFR_FILENAME, "str"),
            num_passes=(CTFR_NUM_PASSES, "int"), field_types=(CTFR_FIELD_TYPES, "ints"),
            field_names=(CTFR_FIELD_NAMES, "strings"))
kernel_args("TextFileReaderRead", batch_size=(TFRR_BATCH_SIZE, "int"))


cdef int k_create_text_file_reader(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef TextReader* r
    cdef string err
    cdef ObjHeader* h
    cdef size_t i
    cdef int fd = fp_tsv_open(op.d.args[CTFR_FILENAME].s.c_str(), &err)
    if fd < 0:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot open file '") +
                        op.d.args[CTFR_FILENAME].s + cstr(b"': ") + err)
    r = new TextReader()
    r.filename = op.d.args[CTFR_FILENAME].s
    for i in range(op.d.args[CTFR_FIELD_TYPES].ints.size()):
        r.types.push_back(<int>op.d.args[CTFR_FIELD_TYPES].ints[i])
    r.names = op.d.args[CTFR_FIELD_NAMES].strings
    r.num_passes = op.d.args[CTFR_NUM_PASSES].i
    r.fd = fd
    r.buf = <char*>malloc(TF_BLOCK)
    r.cap = TF_BLOCK
    r.beg = 0
    r.end = 0
    r.at_eof = False
    r.pass_no = 0
    r.line_no = 0
    r.resume_run = 0
    fp_mutex_init(&r.mu)
    if r.buf == NULL:
        text_reader_destroy(r)
        return op_oom(op, ctx)
    h = obj_new(OBJ_TEXT_READER, r, text_reader_destroy)
    if h == NULL:
        return op_oom(op, ctx)
    blob_set_obj(op.outs[0], h)
    return 0


cdef int tf_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef TfState* st = new TfState()
    st.chunk = NULL
    st.cap = 0
    st.length = 0
    st.nlines = 0
    st.trk_run = 0
    st.trk_src = -1
    op.state = <void*>st
    return 0


cdef void tf_fini(OpInst* op) noexcept nogil:
    cdef TfState* st = <TfState*>op.state
    if st == NULL:
        return
    free(st.chunk)
    del st
    op.state = NULL


cdef int tf_append(TfState* st, const char* p, int64_t n, bint add_nl) noexcept nogil:
    """Append n bytes (and a '\\n' when add_nl) to st's chunk.  -1: no memory."""
    cdef int64_t need = st.length + n + 1
    cdef int64_t ncap
    cdef char* nb
    if need > st.cap:
        ncap = st.cap * 2 if st.cap * 2 > need else need
        nb = <char*>realloc(st.chunk, ncap)
        if nb == NULL:
            return -1
        st.chunk = nb
        st.cap = ncap
    if n > 0:
        memcpy(st.chunk + st.length, p, n)
        st.length += n
    if add_nl:
        st.chunk[st.length] = 10
        st.length += 1
    return 0


# Exact resume: a line's source position is pass * TF_PASS_SPAN + its 0-based
# line number in the pass (the same in every process for the same file).
cdef int64_t TF_PASS_SPAN = (<int64_t>1) << 40     # lines per pass at most


cdef int tf_take(TextReader* r, TfState* st, int64_t want, int64_t src,
                 const FpRanges* sk) noexcept nogil:
    """Hand the next (up to) want lines of r to st, across passes.  The
    caller holds r.mu.  0; -1 out of memory; > 0 an errno of read/lseek.
    Tracking (src >= 0): tags the lines handed out; resumed (sk): lines
    whose positions are in sk are stepped over, not handed out."""
    cdef bint new_seg = True
    cdef bint skipping = False
    cdef int64_t room, pos, jpos, lim
    cdef char* p
    cdef char* q
    cdef char* e
    cdef char* nl
    cdef char* nb
    cdef int64_t n, lines
    cdef int eno = 0
    st.length = 0
    st.nlines = 0
    st.seg_off.clear()
    st.seg_line.clear()
    st.seg_pass.clear()
    while st.nlines < want and r.pass_no < r.num_passes:
        room = want - st.nlines
        skipping = False
        if sk != NULL:
            pos = r.pass_no * TF_PASS_SPAN + r.line_no
            jpos = fp_ranges_jump(sk, pos, &lim)
            if jpos > pos:
                skipping = True         # delivered before: step over, hand out nothing
                room = jpos - pos
                new_seg = True
            elif lim - pos < room:
                room = lim - pos
        if new_seg and not skipping:
            st.seg_off.push_back(st.length)
            st.seg_line.push_back(r.line_no + 1)
            st.seg_pass.push_back(r.pass_no)
            new_seg = False
        # complete lines already in the block
        p = r.buf + r.beg
        e = r.buf + r.end
        q = p
        lines = 0
        while lines < room:
            nl = <char*>memchr(q, 10, e - q)
            if nl == NULL:
                break
            q = nl + 1
            lines += 1
        if q > p:
            if not skipping:
                if tf_append(st, p, q - p, False) != 0:
                    return -1
                st.nlines += lines
                if src >= 0:
                    fp_tags_add(src, r.pass_no * TF_PASS_SPAN + r.line_no,
                                r.pass_no * TF_PASS_SPAN + r.line_no + lines)
            r.beg += q - p
            r.line_no += lines
        if st.nlines >= want:
            break
        if lines == room and q > p:
            continue                    # a skip or a cut ended: look again
        if r.at_eof:
            if r.beg < r.end:       # a last line without a line end
                if not skipping:
                    if tf_append(st, r.buf + r.beg, r.end - r.beg, True) != 0:
                        return -1
                    st.nlines += 1
                    if src >= 0:
                        fp_tags_add(src, r.pass_no * TF_PASS_SPAN + r.line_no,
                                    r.pass_no * TF_PASS_SPAN + r.line_no + 1)
                r.beg = r.end
                r.line_no += 1
                continue
            r.pass_no += 1          # this pass is done
            if r.line_no == 0:
                # an empty file: every later pass is empty too (do not
                # rewind num_passes times under the lock)
                r.pass_no = r.num_passes
            if r.pass_no < r.num_passes:
                eno = fp_tsv_rewind(r.fd)
                if eno != 0:
                    r.pass_no = r.num_passes
                    return eno
                r.at_eof = False
                r.line_no = 0
                r.beg = 0
                r.end = 0
                new_seg = True
            continue
        # refill: keep the partial line at the front, then read after it
        if r.beg > 0:
            memmove(r.buf, r.buf + r.beg, r.end - r.beg)
            r.end -= r.beg
            r.beg = 0
        if r.end == r.cap:          # one line longer than the block
            nb = <char*>realloc(r.buf, r.cap * 2)
            if nb == NULL:
                return -1
            r.buf = nb
            r.cap *= 2
        n = fp_tsv_read(r.fd, r.buf + r.end, r.cap - r.end, &eno)
        if n < 0:
            return eno
        if n == 0:
            r.at_eof = True
        else:
            r.end += n
    return 0


cdef string tf_field_desc(TextReader* r, int f) noexcept nogil:
    """"field 'value' (2 of 2, float32)" or "field 2 of 2 (float32)"."""
    cdef string s = cstr(b"field ")
    if <size_t>f < r.names.size() and r.names[f].size():
        s.append(b"'")
        s.append(r.names[f])
        s.append(b"' (")
        s.append(to_str(f + 1))
        s.append(b" of ")
        s.append(to_str(<int64_t>r.types.size()))
        s.append(b", ")
    else:
        s.append(to_str(f + 1))
        s.append(b" of ")
        s.append(to_str(<int64_t>r.types.size()))
        s.append(b" (")
    s.append(dtype_name(r.types[f]))
    s.append(b")")
    return s


cdef int tf_parse_fail(OpInst* op, RunCtx* ctx, TextReader* r, TfState* st, int code,
                       fp_tsv_err* err) noexcept nogil:
    """Fail the op naming the file, line number and field of a bad line."""
    cdef size_t s = 0, k
    cdef int64_t line, j
    cdef string msg
    cdef string tok
    cdef int f
    for k in range(st.seg_off.size()):
        if st.seg_off[k] <= err.line_off:
            s = k
    line = st.seg_line[s]
    for j in range(st.seg_off[s], err.line_off):
        if st.chunk[j] == 10:
            line += 1
    msg = cstr(b"file '") + r.filename + cstr(b"', line ") + to_str(line)
    if r.num_passes > 1:
        msg.append(b" (pass ")
        msg.append(to_str(st.seg_pass[s] + 1))
        msg.append(b")")
    msg.append(b": ")
    if code == FP_TSV_NFIELDS:
        msg.append(b"has ")
        msg.append(to_str(err.field))
        msg.append(b" field" if err.field == 1 else b" fields")
        msg.append(b" (tab-separated), expected ")
        msg.append(to_str(<int64_t>r.types.size()))
        msg.append(b" (")
        for f in range(<int>r.types.size()):
            if f:
                msg.append(b", ")
            if <size_t>f < r.names.size() and r.names[f].size():
                msg.append(r.names[f])
                msg.append(b":")
            msg.append(dtype_name(r.types[f]))
        msg.append(b")")
    else:
        tok.assign(st.chunk + err.tok_off, <size_t>(err.tok_len if err.tok_len <= 60 else 60))
        if err.tok_len > 60:
            tok.append(b"...")
        msg.append(tf_field_desc(r, err.field))
        msg.append(b": '")
        msg.append(tok)
        if code == FP_TSV_RANGE:
            msg.append(b"' is out of range for ")
            msg.append(dtype_name(r.types[err.field]))
        elif r.types[err.field] != DT_FLOAT and r.types[err.field] != DT_DOUBLE:
            msg.append(b"' is not an integer")
        else:
            msg.append(b"' is not a number")
    return op_fails(op, ctx, E_RUNTIME, msg)


cdef int k_text_file_reader_read(OpInst* op, RunCtx* ctx) noexcept nogil:
    # input: the reader; outputs: one 1-D tensor per field (0 rows at the end)
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_TEXT_READER)
    cdef TextReader* r
    cdef TfState* st = <TfState*>op.state
    cdef int64_t batch = op.d.args[TFRR_BATCH_SIZE].i
    cdef size_t nf, f
    cdef int rc
    cdef int64_t rows
    cdef Tensor* out
    cdef fp_tsv_err err
    cdef int64_t src
    cdef const FpRanges* sk
    if h == NULL:
        return -1
    r = <TextReader*>h.impl
    nf = r.types.size()
    if op.outs.size() != nf:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"the reader '") + op.ins[0].name +
                        cstr(b"' (file '") + r.filename + cstr(b"') has ") +
                        to_str(<int64_t>nf) + cstr(b" fields but the op has ") +
                        to_str(<int64_t>op.outs.size()) + cstr(b" outputs"))
    src = track_src(op, ctx, &st.trk_run, &st.trk_src)
    sk = fp_track_skip(ctx.rs.track, src) if src >= 0 else NULL
    fp_lock(&r.mu)
    if sk != NULL and r.resume_run != ctx.rs.run_id:
        # resumed: the first read of the run restarts the file at pass 0, line 0
        r.resume_run = ctx.rs.run_id
        rc = fp_tsv_rewind(r.fd)
        if rc != 0:
            fp_unlock(&r.mu)
            return op_fails(op, ctx, E_RUNTIME, cstr(b"rewinding file '") + r.filename +
                            cstr(b"': ") + fp_tsv_strerror(rc))
        r.pass_no = 0
        r.line_no = 0
        r.beg = 0
        r.end = 0
        r.at_eof = False
    rc = tf_take(r, st, batch, src, sk)
    fp_unlock(&r.mu)
    if rc == -1:
        return op_oom(op, ctx)
    if rc > 0:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"reading file '") + r.filename +
                        cstr(b"': ") + fp_tsv_strerror(rc))
    rows = st.nlines
    st.outs.resize(nf)
    for f in range(nf):
        out = blob_out(op.outs[f])
        if out_shape(op, ctx, out, r.types[f], 1, &rows) != 0:
            return -1
        st.outs[f] = tdata(out)
    if rows == 0:
        return 0
    rc = fp_tsv_parse(st.chunk, st.length, rows, <int>nf, r.types.data(), st.outs.data(), &err)
    if rc != FP_TSV_OK:
        return tf_parse_fail(op, ctx, r, st, rc, &err)
    return 0
