# The kernel table: operator type -> native kernel (schemas: _opschema.py).
#
# Kernels read their arguments through named positions (kernel_args tables,
# base.pxi); check_kernel_args() below holds every table to its schema, and
# the module runs it on import (end of dataset.pxi, the last include), so a
# schema edit that moves an argument fails here, naming the op and argument.

reg("ConstantFill", k_constant_fill)
reg("GivenTensorFill", k_given_fill)
reg("GivenTensorDoubleFill", k_given_double_fill)
reg("GivenTensorIntFill", k_given_int_fill)
reg("GivenTensorInt64Fill", k_given_int64_fill)
reg("GivenTensorBoolFill", k_given_bool_fill)
reg("GivenTensorStringFill", k_given_string_fill)
reg("Copy", k_copy)
reg("Not", k_not)
reg("And", k_and)
reg("Or", k_or)
reg("Xor", k_xor)
reg("LT", k_lt)
reg("LE", k_le)
reg("GT", k_gt)
reg("GE", k_ge)
reg("EQ", k_eq)
reg("NE", k_ne)
reg("Add", k_add)
reg("Sub", k_sub)
reg("Mul", k_mul)
reg("Div", k_div)
reg("Sum", k_sum)
reg("Scale", k_scale)
reg("Cast", k_cast)
reg("IsEmpty", k_is_empty)
reg("Print", k_print, print_init, print_fini)
reg("CreateCounter", k_create_counter)
reg("ResetCounter", k_reset_counter)
reg("CountDown", k_count_down)
reg("CountUp", k_count_up)
reg("CheckCounterDone", k_check_counter_done)
reg("RetrieveCount", k_retrieve_count)
reg("CreateMutex", k_create_mutex)
reg("AtomicAppend", k_atomic_append)
reg("Python", k_python, pyop_init, pyop_fini)
reg("PythonStage", k_python_stage, stage_init, stage_fini)
reg("CreateBlobsQueue", k_create_queue)
reg("EnqueueBlobs", k_enqueue, qop_init, qop_fini, True)
reg("DequeueBlobs", k_dequeue, qop_init, qop_fini, True)
reg("CloseBlobsQueue", k_close_queue)
reg("SafeEnqueueBlobs", k_safe_enqueue, qop_init, qop_fini, True)
reg("SafeDequeueBlobs", k_safe_dequeue, qop_init, qop_fini, True)
reg("WeightedSampleDequeueBlobs", k_weighted_dequeue, qop_init, qop_fini, True)
reg("CreateRebatchingQueue", k_create_rebatching_queue)
reg("EnqueueRebatchingQueue", k_enqueue_rebatching_queue, rq_op_init, rq_op_fini, True)
reg("DequeueRebatchingQueue", k_dequeue_rebatching_queue, rq_op_init, rq_op_fini, True)
reg("CloseRebatchingQueue", k_close_rebatching_queue)
reg("TimerBegin", k_timer_begin, timer_init, timer_fini)
reg("TimerEnd", k_timer_end)
reg("TimerGetAndEnd", k_timer_get_and_end)
reg("TimerGet", k_timer_get)
reg("StatRegistryExport", k_stat_export)
reg("StatRegistryUpdate", k_stat_update)
# data ops (dataops.pxi)
reg("BooleanMask", k_boolean_mask)
reg("Gather", k_gather)
reg("Concat", k_concat)
reg("Split", k_split)
reg("Reshape", k_reshape)
reg("Slice", k_slice)
reg("ExpandDims", k_expand_dims)
reg("Squeeze", k_squeeze)
reg("Transpose", k_transpose)
reg("Clip", k_clip)
reg("UniformFill", k_uniform_fill, rng_init, rng_fini)
reg("GaussianFill", k_gaussian_fill, rng_init, rng_fini)
reg("CreateTextFileReader", k_create_text_file_reader)
reg("TextFileReaderRead", k_text_file_reader_read, tf_init, tf_fini)
reg("CreateTextFileWriter", k_create_text_file_writer)
reg("TextFileWriterWrite", k_text_file_writer_write, tw_init, tw_fini)
reg("TextFileWriterClose", k_text_file_writer_close)
# control ops (control.pxi): subnets bound at op init, freed at op fini
reg("If", k_if, if_init, cond_state_free)
# (a While may never end: blocking, so it runs where a cancel or Ctrl-C reaches it)
reg("While", k_while, while_init, cond_state_free, True)
reg("Do", k_do, do_init, do_fini)
reg("CreateScope", k_create_scope)
# checkpoints over minidb (savedb.pxi)
reg("Save", k_save)
reg("Load", k_load)
reg("DBExists", k_db_exists)
reg("GetAllBlobNames", k_get_all_blob_names)


# Kernels in pyop.pxi: Print and PythonStage read their arguments by the
# named positions declared next to them there; Python does not index its
# arguments (its table pins the schema order it was written against).
kernel_args("Print", to_file=(PRINT_TO_FILE, "bool"), limit=(PRINT_LIMIT, "int"),
            every_n=(PRINT_EVERY_N, "int"))
cdef enum:
    PY_TOKEN = 0
    PY_GRAD_INPUT_INDICES = 1
    PY_GRAD_OUTPUT_INDICES = 2
kernel_args("Python", token=(PY_TOKEN, "str"), grad_input_indices=(PY_GRAD_INPUT_INDICES, "ints"),
            grad_output_indices=(PY_GRAD_OUTPUT_INDICES, "ints"))
kernel_args("PythonStage", token=(PS_TOKEN, "str"), fields=(PS_FIELDS, "strings"),
            stage=(PS_STAGE, "str"), instance=(PS_INSTANCE, "int"),
            num_instances=(PS_NUM_INSTANCES, "int"))


def check_kernel_args(registry, tables, kernels):
    """Hold kernel argument tables to their schemas.

    registry: op type -> OpSchema (_opschema.REGISTRY); tables: op type ->
    {argument name: (position, kind)} (kernel_args); kernels: op types that
    have a native kernel.  Every kernel of an op whose schema has arguments
    needs a table; a table must name every schema argument at the schema's
    position and kind, and nothing else.  Raises OperatorDefError naming the
    op and argument of the first mismatch."""
    from fastpipe.errors import OperatorDefError

    def fail(op_type, msg):
        raise OperatorDefError("kernel argument table of %r does not match its schema "
                               "(fastpipe/_opschema.py): %s" % (op_type, msg))
    for op_type in sorted(kernels):
        schema = registry.get(op_type)
        if schema is not None and schema.args and op_type not in tables:
            fail(op_type, "the schema has arguments %s but the kernel declares no table"
                 % [a.name for a in schema.args])
    for op_type in sorted(tables):
        table = tables[op_type]
        schema = registry.get(op_type)
        if schema is None:
            fail(op_type, "no schema is registered for this op type")
        for name, (pos, kind) in sorted(table.items(), key=lambda kv: kv[1][0]):
            if name not in schema.arg_index:
                fail(op_type, "the kernel reads argument %r at position %d, which the "
                     "schema does not have" % (name, pos))
            spos = schema.arg_index[name]
            if spos != pos:
                fail(op_type, "argument %r is at position %d in the schema but the kernel "
                     "reads position %d" % (name, spos, pos))
            if schema.args[spos].kind != kind:
                fail(op_type, "argument %r is of kind %r in the schema but the kernel "
                     "reads it as %r" % (name, schema.args[spos].kind, kind))
        for spec in schema.args:
            if spec.name not in table:
                fail(op_type, "schema argument %r (position %d) is missing from the "
                     "kernel's table" % (spec.name, schema.arg_index[spec.name]))


def kernel_arg_tables():
    """The kernel argument tables (op type -> {name: (position, kind)}), a copy."""
    return {k: dict(v) for k, v in _KERNEL_ARGS.items()}
