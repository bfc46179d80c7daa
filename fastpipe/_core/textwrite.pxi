# Text file writers: CreateTextFileWriter, TextFileWriterWrite and
# TextFileWriterClose (the ops of fastpipe.text_file_reader.TextFileWriter).
#
# A writer (OBJ_TEXT_WRITER) owns the open file descriptor.  Every op writing
# it -- one per runtime instance of a pipe -- formats its whole batch into its
# own scratch string first, without any lock (so N instances format in
# parallel), then takes the writer's mutex only for the write() calls of that
# one buffer: the lines of a batch are contiguous in the file and never
# interleave with another instance's.  Numbers are formatted in the C locale
# with std::to_chars: integers in decimal, floats as the shortest string that
# std::from_chars (the reader) parses back to the same float32 / float64
# (NaN as "nan", so a NaN's sign and payload are not kept).  Strings are
# written as their bytes; one holding a tab, '\n' or '\r' fails the op (the
# reader does not unescape).

cdef extern from *:
    """
    #include <charconv>
    #include <string>
    #include <cstring>
    #include <cstdint>
    #include <cmath>
    #include <fcntl.h>
    #include <unistd.h>
    #include <errno.h>

    /* column kinds (fastpipe's DataType mapped to what formatting needs) */
    enum { FP_TW_I8 = 0, FP_TW_I16, FP_TW_I32, FP_TW_I64, FP_TW_U8, FP_TW_U16,
           FP_TW_F32, FP_TW_F64, FP_TW_STR };

    template <typename T>
    static inline void fp_tw_num(std::string* out, T v) noexcept {
        char tmp[64];
        std::to_chars_result r = std::to_chars(tmp, tmp + sizeof(tmp), v);
        out->append(tmp, (size_t)(r.ptr - tmp));
    }

    template <typename T>
    static inline void fp_tw_float(std::string* out, T v) noexcept {
        if (std::isnan(v)) { out->append("nan", 3); return; }
        fp_tw_num(out, v);   /* shortest round trip; "inf" / "-inf" */
    }

    /* Append rows [0, n) of the nf columns as TSV lines to *out (cleared
       first).  0, or 1 for a string holding a tab or line end (its field and
       row in *bad_field / *bad_row).  std::bad_alloc: -1. */
    static int fp_tw_format(int64_t n, int nf, const int* kinds, void* const* cols,
                            std::string* out, int* bad_field, int64_t* bad_row) noexcept {
        try {
            out->clear();
            for (int64_t i = 0; i < n; i++) {
                for (int f = 0; f < nf; f++) {
                    if (f) out->push_back('\\t');
                    const void* c = cols[f];
                    switch (kinds[f]) {
                    case FP_TW_I8: fp_tw_num(out, (int)((const int8_t*)c)[i]); break;
                    case FP_TW_I16: fp_tw_num(out, (int)((const int16_t*)c)[i]); break;
                    case FP_TW_I32: fp_tw_num(out, ((const int32_t*)c)[i]); break;
                    case FP_TW_I64: fp_tw_num(out, ((const int64_t*)c)[i]); break;
                    case FP_TW_U8: fp_tw_num(out, (unsigned)((const uint8_t*)c)[i]); break;
                    case FP_TW_U16: fp_tw_num(out, (unsigned)((const uint16_t*)c)[i]); break;
                    case FP_TW_F32: fp_tw_float(out, ((const float*)c)[i]); break;
                    case FP_TW_F64: fp_tw_float(out, ((const double*)c)[i]); break;
                    default: {
                        const std::string& s = ((const std::string*)c)[i];
                        if (s.find_first_of("\\t\\n\\r") != std::string::npos) {
                            *bad_field = f;
                            *bad_row = i;
                            return 1;
                        }
                        out->append(s);
                    }
                    }
                }
                out->push_back('\\n');
            }
            return 0;
        } catch (...) {
            return -1;
        }
    }

    static int fp_tw_open(const char* path, int append, int* eno) noexcept {
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC),
                      0666);
        if (fd < 0) *eno = errno;
        return fd;
    }

    /* write() all n bytes (retrying EINTR and short writes): 0 or errno. */
    static int fp_tw_write_all(int fd, const char* p, int64_t n) noexcept {
        while (n > 0) {
            ssize_t k = write(fd, p, (size_t)n);
            if (k < 0) {
                if (errno == EINTR) continue;
                return errno;
            }
            p += k;
            n -= k;
        }
        return 0;
    }

    /* close(): 0 or errno (a failed close can mean lost data, e.g. NFS). */
    static int fp_tw_close(int fd) noexcept {
        return close(fd) == 0 ? 0 : errno;
    }
    """
    enum:
        FP_TW_I8
        FP_TW_I16
        FP_TW_I32
        FP_TW_I64
        FP_TW_U8
        FP_TW_U16
        FP_TW_F32
        FP_TW_F64
        FP_TW_STR
    int fp_tw_format(int64_t n, int nf, const int* kinds, void* const* cols, string* out,
                     int* bad_field, int64_t* bad_row) noexcept nogil
    int fp_tw_open(const char* path, int append, int* eno) noexcept nogil
    int fp_tw_write_all(int fd, const char* p, int64_t n) noexcept nogil
    int fp_tw_close(int fd) noexcept nogil


cdef cppclass TextWriter:
    # immutable after CreateTextFileWriter
    string filename
    vector[int] types           # DataType per field
    vector[int] kinds           # FP_TW_* per field
    vector[string] names        # field names for messages (may be empty)
    fp_mutex mu                 # protects fd and lines
    int fd                      # -1 once closed
    int64_t lines               # lines written


cdef void text_writer_destroy(void* p) noexcept nogil:
    cdef TextWriter* w = <TextWriter*>p
    if w.fd >= 0:
        fp_tw_close(w.fd)
    fp_mutex_destroy(&w.mu)
    del w


# Per write op (one per runtime instance): the formatted batch and the
# pinned input snapshots.  Reused across batches: a steady loop does not
# allocate once the scratch string has grown to a batch's size.
cdef cppclass TwState:
    string text
    vector[Tensor] snaps
    vector[void*] cols


cdef enum:   # argument positions (checked against the schemas on import)
    CTFW_FILENAME = 0               # CreateTextFileWriter
    CTFW_APPEND = 1
    CTFW_FIELD_TYPES = 2
    CTFW_FIELD_NAMES = 3
kernel_args("CreateTextFileWriter", filename=(CTFW_FILENAME, "str"),
            append=(CTFW_APPEND, "bool"), field_types=(CTFW_FIELD_TYPES, "ints"),
            field_names=(CTFW_FIELD_NAMES, "strings"))


cdef int tw_kind(int dt) noexcept nogil:
    if dt == DT_INT8: return FP_TW_I8
    if dt == DT_INT16: return FP_TW_I16
    if dt == DT_INT32: return FP_TW_I32
    if dt == DT_INT64: return FP_TW_I64
    if dt == DT_UINT8: return FP_TW_U8
    if dt == DT_UINT16: return FP_TW_U16
    if dt == DT_FLOAT: return FP_TW_F32
    if dt == DT_DOUBLE: return FP_TW_F64
    if dt == DT_STRING: return FP_TW_STR
    return -1


cdef string tw_field_desc(TextWriter* w, size_t f) noexcept nogil:
    cdef string s = cstr(b"field ")
    s.append(to_str(<int64_t>f))
    if f < w.names.size() and w.names[f].size():
        s.append(b" ('")
        s.append(w.names[f])
        s.append(b"')")
    return s


cdef int k_create_text_file_writer(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef TextWriter* w
    cdef ObjHeader* h
    cdef size_t i
    cdef int eno = 0
    cdef int k
    cdef int fd
    for i in range(op.d.args[CTFW_FIELD_TYPES].ints.size()):
        if tw_kind(<int>op.d.args[CTFW_FIELD_TYPES].ints[i]) < 0:
            return op_fails(op, ctx, E_RUNTIME, cstr(b"field_types[") + to_str(<int64_t>i) +
                            cstr(b"] is not a type a TSV field can hold"))
    fd = fp_tw_open(op.d.args[CTFW_FILENAME].s.c_str(), <int>op.d.args[CTFW_APPEND].i, &eno)
    if fd < 0:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"cannot open file '") +
                        op.d.args[CTFW_FILENAME].s + cstr(b"' for writing: ") +
                        fp_tsv_strerror(eno))
    w = new TextWriter()
    w.filename = op.d.args[CTFW_FILENAME].s
    for i in range(op.d.args[CTFW_FIELD_TYPES].ints.size()):
        k = <int>op.d.args[CTFW_FIELD_TYPES].ints[i]
        w.types.push_back(k)
        w.kinds.push_back(tw_kind(k))
    w.names = op.d.args[CTFW_FIELD_NAMES].strings
    w.fd = fd
    w.lines = 0
    fp_mutex_init(&w.mu)
    h = obj_new(OBJ_TEXT_WRITER, w, text_writer_destroy)
    if h == NULL:
        return op_oom(op, ctx)
    blob_set_obj(op.outs[0], h)
    return 0


cdef int tw_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    op.state = <void*>new TwState()
    return 0


cdef void tw_release(TwState* st) noexcept nogil:
    cdef size_t i
    for i in range(st.snaps.size()):
        buf_decref(st.snaps[i].buf)
    st.snaps.clear()


cdef void tw_fini(OpInst* op) noexcept nogil:
    cdef TwState* st = <TwState*>op.state
    if st == NULL:
        return
    tw_release(st)
    del st
    op.state = NULL


cdef int k_text_file_writer_write(OpInst* op, RunCtx* ctx) noexcept nogil:
    # inputs: the writer, then one 1-D tensor per field (equal lengths)
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_TEXT_WRITER)
    cdef TextWriter* w
    cdef TwState* st = <TwState*>op.state
    cdef size_t nf, f
    cdef Tensor* px
    cdef Tensor snap
    cdef int64_t rows = 0
    cdef int rc
    cdef int bad_field = 0
    cdef int64_t bad_row = 0
    cdef string msg
    if h == NULL:
        return -1
    w = <TextWriter*>h.impl
    nf = w.types.size()
    if op.ins.size() != nf + 1:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"the writer '") + op.ins[0].name +
                        cstr(b"' (file '") + w.filename + cstr(b"') has ") +
                        to_str(<int64_t>nf) + cstr(b" fields but the op has ") +
                        to_str(<int64_t>op.ins.size() - 1) + cstr(b" field inputs"))
    tw_release(st)
    st.cols.resize(nf)
    for f in range(nf):
        px = in_t(op, ctx, f + 1)
        if px == NULL:
            tw_release(st)
            return -1
        tensor_snapshot(px, &snap)
        st.snaps.push_back(snap)
        if snap.dtype != w.types[f] or snap.ndim != 1:
            msg = cstr(b"writing file '") + w.filename + cstr(b"': ") + tw_field_desc(w, f)
            msg.append(b" (input '")
            msg.append(op.ins[f + 1].name)
            msg.append(b"') is ")
            msg.append(tensor_describe(&snap))
            msg.append(b", expected a 1-D ")
            msg.append(dtype_name(w.types[f]))
            tw_release(st)
            return op_fails(op, ctx, E_RUNTIME, msg)
        if f == 0:
            rows = snap.shape[0]
        elif snap.shape[0] != rows:
            msg = cstr(b"writing file '") + w.filename + cstr(b"': ") + tw_field_desc(w, f)
            msg.append(b" has ")
            msg.append(to_str(snap.shape[0]))
            msg.append(b" values but ")
            msg.append(tw_field_desc(w, 0))
            msg.append(b" has ")
            msg.append(to_str(rows))
            tw_release(st)
            return op_fails(op, ctx, E_RUNTIME, msg)
        st.cols[f] = tdata(&st.snaps[f])
    if rows == 0:
        tw_release(st)
        return 0
    # format without any lock: instances format in parallel
    rc = fp_tw_format(rows, <int>nf, w.kinds.data(), st.cols.data(), &st.text,
                      &bad_field, &bad_row)
    tw_release(st)
    if rc == -1:
        return op_oom(op, ctx)
    if rc == 1:
        msg = cstr(b"writing file '") + w.filename + cstr(b"': ") + \
            tw_field_desc(w, <size_t>bad_field)
        msg.append(b", value ")
        msg.append(to_str(bad_row))
        msg.append(b" of the batch holds a tab or line end (TSV fields are not escaped)")
        return op_fails(op, ctx, E_RUNTIME, msg)
    fp_lock(&w.mu)
    if w.fd < 0:
        fp_unlock(&w.mu)
        return op_fails(op, ctx, E_RUNTIME, cstr(b"writing file '") + w.filename +
                        cstr(b"': the writer is closed"))
    rc = fp_tw_write_all(w.fd, st.text.data(), <int64_t>st.text.size())
    if rc == 0:
        w.lines += rows
    fp_unlock(&w.mu)
    if rc != 0:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"writing file '") + w.filename +
                        cstr(b"': ") + fp_tsv_strerror(rc))
    return 0


cdef int k_text_file_writer_close(OpInst* op, RunCtx* ctx) noexcept nogil:
    # input: the writer; closing twice is a no-op.  Output (optional): the
    # number of lines written, an int64 scalar.
    cdef ObjHeader* h = op_obj(op, ctx, 0, OBJ_TEXT_WRITER)
    cdef TextWriter* w
    cdef int rc = 0
    cdef int64_t lines
    cdef Tensor* out
    if h == NULL:
        return -1
    w = <TextWriter*>h.impl
    fp_lock(&w.mu)
    if w.fd >= 0:
        rc = fp_tw_close(w.fd)
        w.fd = -1
    lines = w.lines
    fp_unlock(&w.mu)
    if rc != 0:
        return op_fails(op, ctx, E_RUNTIME, cstr(b"closing file '") + w.filename +
                        cstr(b"': ") + fp_tsv_strerror(rc))
    if op.outs.size() > 0:
        out = blob_out(op.outs[0])
        if out_shape(op, ctx, out, DT_INT64, 0, NULL) != 0:
            return -1
        (<int64_t*>tdata(out))[0] = lines
    return 0
