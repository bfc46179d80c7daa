# Control operators: If, While, Do (and CreateScope), with Caffe2's semantics.
#
# A subnet is a NetDef argument.  Lowering (lower.pxi, Program._lower_subnet)
# turns it into a child NetDesc through the same path as a top-level net, so
# its ops have kernels, parsed arguments and Python functions like any other;
# the argument slot holds the NetDesc pointer (ArgVal.i, read by arg_net).
#
# Binding happens in the op's init, i.e. when the op's net is compiled into a
# workspace (net_compile): each subnet is compiled into a NetInst owned by the
# op instance.  N runtime instances compile N outer nets, so they get N
# independent bindings of one description; nothing is shared between them.
# Subnet instances are never entered in a workspace's net map: no step can run
# them, and they are freed with the op (its fini).
#
# Kernels run without the GIL.  A subnet runs on the thread running its op, one
# op at a time, so no state here needs a lock.  An error inside a subnet is
# reported by the inner op itself: its message names the inner op and the
# subnet's path, "<net>/<op>.<argument>/<subnet name>".

cdef enum:
    IF_THEN_NET = 0
    IF_ELSE_NET = 1
kernel_args("If", then_net=(IF_THEN_NET, "net"), else_net=(IF_ELSE_NET, "net"))

cdef enum:
    WHILE_LOOP_NET = 0
    WHILE_COND_NET = 1
kernel_args("While", loop_net=(WHILE_LOOP_NET, "net"), cond_net=(WHILE_COND_NET, "net"))

cdef enum:
    DO_NET = 0
    DO_INNER_BLOBS = 1
    DO_OUTER_BLOBS_IDX = 2
    DO_SAVED_FWD_BLOBS = 3
    DO_REUSE_WORKSPACE = 4
    DO_COPY_EXTERNAL_BLOBS = 5
kernel_args("Do", net=(DO_NET, "net"), inner_blobs=(DO_INNER_BLOBS, "strings"),
            outer_blobs_idx=(DO_OUTER_BLOBS_IDX, "ints"),
            saved_fwd_blobs=(DO_SAVED_FWD_BLOBS, "strings"),
            reuse_workspace=(DO_REUSE_WORKSPACE, "bool"),
            copy_external_blobs=(DO_COPY_EXTERNAL_BLOBS, "bool"))


cdef inline NetDesc* arg_net(OpInst* op, int k) noexcept nogil:
    """The subnet description in argument slot k (NULL when not given)."""
    if not op.d.args[k].present:
        return NULL
    return <NetDesc*><size_t>op.d.args[k].i


cdef int cond_fail(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef Blob* b = op.ins[0]
    cdef string msg = cstr(b"condition blob '")
    msg.append(b.name)
    msg.append(b"' must be a bool tensor with a single value, got ")
    if b.obj != NULL:
        msg.append(OBJ_NAMES[b.obj.kind])
    else:
        msg.append(tensor_describe(&b.t))
    return op_fails(op, ctx, E_RUNTIME, msg)


cdef inline int cond_value(OpInst* op, RunCtx* ctx, bint* out) noexcept nogil:
    """out = the value of input 0, a bool tensor of one element (Caffe2:
    "Invalid condition ... single value expected"); anything else is an
    error naming the op and the blob."""
    cdef Blob* b = op.ins[0]
    if b.obj == NULL and b.t.dtype == DT_BOOL and b.t.size == 1:
        out[0] = (<uint8_t*>tdata(&b.t))[0] != 0
        return 0
    return cond_fail(op, ctx)


# ---- If and While: two subnets run in the op's own workspace --------------------

ctypedef struct CondState:
    NetInst* a      # If: then_net; While: loop_net
    NetInst* b      # If: else_net; While: cond_net (NULL when not given)


cdef void cond_state_free(OpInst* op) noexcept nogil:
    cdef CondState* st = <CondState*>op.state
    if st == NULL:
        return
    net_decref(st.a)
    net_decref(st.b)
    free(st)
    op.state = NULL


cdef int two_nets_init(OpInst* op, RunCtx* ctx, int ka, int kb) noexcept nogil:
    # Caffe2 creates the subnets in the op's workspace when the op is made.
    cdef CondState* st = <CondState*>calloc(1, sizeof(CondState))
    cdef NetDesc* nb
    if st == NULL:
        return op_oom(op, ctx)
    op.state = st
    st.a = net_compile(arg_net(op, ka), op.ws, ctx)
    if st.a == NULL:
        cond_state_free(op)     # net_compile drops a failed op without its fini
        return -1
    nb = arg_net(op, kb)
    if nb != NULL:
        st.b = net_compile(nb, op.ws, ctx)
        if st.b == NULL:
            cond_state_free(op)
            return -1
    return 0


cdef int if_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    return two_nets_init(op, ctx, IF_THEN_NET, IF_ELSE_NET)


cdef int while_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    return two_nets_init(op, ctx, WHILE_LOOP_NET, WHILE_COND_NET)


cdef int k_if(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef CondState* st = <CondState*>op.state
    cdef bint c = False
    if cond_value(op, ctx, &c) != 0:
        return -1
    if c:
        return net_run(st.a, ctx)
    if st.b != NULL:
        return net_run(st.b, ctx)
    return 0


cdef int k_while(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef CondState* st = <CondState*>op.state
    cdef bint c = False
    while True:
        # Between iterations: a cancelled run (Run.cancel(), a failure
        # elsewhere, Ctrl-C) ends the loop; the run already holds its error.
        if rs_cancelled(ctx):
            return -1
        if st.b != NULL and net_run(st.b, ctx) != 0:
            return -1
        if cond_value(op, ctx, &c) != 0:
            return -1
        if not c:
            return 0
        if net_run(st.a, ctx) != 0:
            return -1


# ---- Do: a subnet in a child workspace that sees only the bound outer blobs -----
#
# Caffe2 gives the subnet a workspace whose only visible outer blobs are the
# forwarded ones (inner name -> outer blob); every other blob the subnet makes
# is local.  Here the child workspace has no parent, and each bound inner name
# is entered in its blob map pointing at the outer Blob (borrowed: the entries
# are removed before the child is freed, so ws_free never frees an outer
# blob).  Nested control ops compile their own subnets into the child with the
# ordinary name lookup, so they see the same bindings.
#
# Caffe2 keeps a stack of child workspaces in the CreateScope blob (a new one
# per forward run, reused across runs; for gradients).  fastpipe runs forward
# nets only and keeps one child per op binding: local blobs keep their last
# value between executions (Caffe2's reuse_workspace behaviour).  Every local
# is written before it is read in each execution anyway (binding checks that
# every input exists), so results match Caffe2's.

cdef cppclass DoState:
    WS* child
    NetInst* net
    vector[string] bound    # inner names borrowed from the outer workspace


cdef void do_state_free(OpInst* op) noexcept nogil:
    cdef DoState* st = <DoState*>op.state
    cdef size_t i
    if st == NULL:
        return
    net_decref(st.net)          # ops first: their fini may still use blobs
    fp_lock(&st.child.lock)
    for i in range(st.bound.size()):
        st.child.blobs.erase(st.bound[i])
    fp_unlock(&st.child.lock)
    ws_free(st.child)
    del st
    op.state = NULL


cdef int do_init(OpInst* op, RunCtx* ctx) noexcept nogil:
    cdef DoState* st = new DoState()
    cdef const vector[string]* inner = &op.d.args[DO_INNER_BLOBS].strings
    cdef const vector[int64_t]* idx = &op.d.args[DO_OUTER_BLOBS_IDX].ints
    cdef size_t nin = op.ins.size() - 1       # the workspace blob is not bound
    cdef size_t nout = op.outs.size() - 1
    cdef size_t k
    cdef int64_t j
    cdef Blob* b
    st.child = ws_new(NULL)
    st.net = NULL
    op.state = st
    # (bindings were checked against the op's arity when it was lowered:
    # _opschema._check_do; the bounds are checked again here, cheaply)
    for k in range(inner.size()):
        j = idx[0][k]
        if j < 0 or <size_t>j >= nin + nout:
            do_state_free(op)
            return op_fail(op, ctx, E_PLAN, b"outer_blobs_idx out of bounds")
        b = op.ins[j] if <size_t>j < nin else op.outs[j - nin]
        fp_lock(&st.child.lock)
        st.child.blobs[inner[0][k]] = b
        fp_unlock(&st.child.lock)
        st.bound.push_back(inner[0][k])
    st.net = net_compile(arg_net(op, DO_NET), st.child, ctx)
    if st.net == NULL:
        do_state_free(op)       # net_compile drops a failed op without its fini
        return -1
    return 0


cdef int k_do(OpInst* op, RunCtx* ctx) noexcept nogil:
    return net_run((<DoState*>op.state).net, ctx)


cdef void do_fini(OpInst* op) noexcept nogil:
    do_state_free(op)


cdef int k_create_scope(OpInst* op, RunCtx* ctx) noexcept nogil:
    # The workspace blob exists once the net is bound (outputs are created);
    # the Do ops that name it keep their child workspaces themselves.
    return 0
