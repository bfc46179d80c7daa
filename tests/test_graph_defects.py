"""Graph-layer defects of issue 7, each with a test that failed before its fix.

* ``net.Const(0)`` and ``net.Const(1)`` in one name scope returned the same
  blob, named with the scope repeated (``init/init/init/...``).
* A queue reader's ``read(net)`` returned a list of nets as its stop blob
  and added nothing to ``net``, so ``reader.execution_step()`` failed.
* Functions behind ``Python`` ops stayed in ``_pyop``'s table for the life
  of the process.
"""
import copy
import gc
import pickle
import weakref

import numpy as np
import pytest

from fastpipe import _pyop, core
from fastpipe.net_builder import NetBuilder, ops
from fastpipe.pipeline import pipe
from fastpipe.queue_util import Queue
from fastpipe.task import Task, TaskGroup

from pipeline_helpers import local_session, make_dataset


# -- Const naming ----------------------------------------------------------------


def test_consts_in_one_name_scope_are_distinct_blobs_named_like_caffe2():
    net = core.Net("init")
    with core.NameScope("init"):
        zero = net.Const(0)
        one = net.Const(1)
    assert zero != one
    # Caffe2's Net.Const: NextName('<net>/GivenTensorInt64Fill', output 0)
    # under the scope once; the second gets the _2 suffix.
    name = net.Name()
    assert str(zero) == "init/%s/GivenTensorInt64Fill:0" % name
    assert str(one) == "init/%s/GivenTensorInt64Fill_2:0" % name
    assert [list(op.output) for op in net.Proto().op] == [[str(zero)], [str(one)]]


def test_consts_with_other_special_kwargs_are_scoped_once():
    net = core.Net("c")
    with core.NameScope("a"):
        with core.NameScope("b"):
            x = net.Const(np.float32(2.0))
            y = net.ConstantFill([], 1, shape=[1], value=1.0, name="named")
            z = net.Const(3, blob_out="z")
    assert str(x).startswith("a/b/%s/" % net.Name())
    assert str(y).startswith("a/b/%s/" % net.Name())
    assert str(z) == "a/b/z"


def test_consts_in_a_scope_hold_their_own_values_at_run_time(ws):
    net = core.Net("vals")
    with core.NameScope("vals"):
        blobs = [net.Const(v) for v in (0, 1, 2)]
    assert len({str(b) for b in blobs}) == 3
    ws.run(net)
    assert [int(np.asarray(ws.blobs[str(b)].fetch())) for b in blobs] == [0, 1, 2]


# -- queue reader ------------------------------------------------------------------


def test_queue_reader_read_adds_the_dequeue_to_net():
    q = Queue(4, schema=None, name="rq")
    # a schema comes from the first writer; give it one directly here
    from pipeline_helpers import int_struct
    q._schema = int_struct("x")
    net = core.Net("read_here")
    status, fields = q.reader().read(net)
    assert isinstance(status, core.BlobReference)
    assert [op.type for op in net.Proto().op] == ["SafeDequeueBlobs"]
    assert list(net.Proto().op[0].output) == [str(f) for f in fields] + [str(status)]
    assert net.get_attributes(TaskGroup.LOCAL_SETUP) == [q]


@pytest.mark.timeout(60)
def test_queue_reader_execution_step_runs(ws):
    src = make_dataset(ws, "qr_src", {"x": list(range(1, 11))})
    init = core.Net("qr_store_init")
    init.ConstantFill([], ["qr_store"], shape=[0], dtype=core.DataType.INT64)
    mutex = init.CreateMutex([], ["qr_mutex"])
    ws.run(init)
    with TaskGroup() as tg:
        q = pipe(src.reader(batch_size=3), capacity=2)
        with Task(name="qr_consumer"):
            read_step, fields = q.reader().execution_step("qr_read")
            # the loop reads until the queue is closed and drained; each
            # iteration's batch is appended by a net that runs only while
            # the read did not stop
            assert read_step.Proto().should_stop_blob
            append = core.Net("qr_append")
            append.AtomicAppend([mutex, "qr_store", fields.field_blobs()[0]],
                                ["qr_store"])
            with ops.loop():
                ops.net(read_step.Nets()[0])
                ops.stop_if(read_step.Proto().should_stop_blob)
                ops.net(append)
    local_session(ws).run(tg)
    got = np.asarray(ws.blobs["qr_store"].fetch()).tolist()
    assert sorted(got) == list(range(1, 11))


@pytest.mark.timeout(60)
def test_queue_reader_execution_step_is_the_consumer_task(ws):
    """The step ``execution_step()`` returns, run as it is: it loops until
    the producer closed the queue and it is drained."""
    src = make_dataset(ws, "qs_src", {"x": list(range(1, 11))})
    init = core.Net("qs_store_init")
    init.ConstantFill([], ["qs_store"], shape=[0], dtype=core.DataType.INT64)
    mutex = init.CreateMutex([], ["qs_mutex"])
    ws.run(init)
    with TaskGroup() as tg:
        q = pipe(src.reader(batch_size=4), capacity=2)
        with Task(name="qs_consumer"):
            read_step, fields = q.reader().execution_step("qs_read")
            # appended in the read net itself: the stop is checked after
            # it, so the final (stopping) read appends its stale batch again
            read_step.Nets()[0].AtomicAppend(
                [mutex, "qs_store", fields.field_blobs()[0]], ["qs_store"])
            NetBuilder.current().add(read_step)
    local_session(ws).run(tg)
    got = np.asarray(ws.blobs["qs_store"].fetch()).tolist()
    assert sorted(set(got)) == list(range(1, 11))
    assert len(got) <= 10 + 4


# -- Python op registrations die with the graph -------------------------------------


class _Big(object):
    """Stands for whatever a user's closure captures."""

    def __init__(self):
        self.payload = bytearray(1 << 20)


def _python_op_net(name):
    big = _Big()
    ref = weakref.ref(big)

    def f(inputs, outputs):
        outputs[0].feed(np.array([len(big.payload)], np.int64))
    net = core.Net(name)
    net.Python(f)([], ["%s/out" % name])
    return net, ref


def _collected(ref):
    gc.collect()
    return ref() is None


def test_python_op_function_freed_with_its_net():
    gc.collect()    # drop what earlier tests left in garbage cycles
    before = _pyop.registered_count()
    net, ref = _python_op_net("pyop_net")
    assert _pyop.registered_count() == before + 1
    assert not _collected(ref)
    del net
    assert _collected(ref)
    assert _pyop.registered_count() == before


def test_python_op_function_lives_while_a_copy_or_plan_uses_it():
    net, ref = _python_op_net("pyop_plan")
    clone = net.Clone("pyop_plan_clone")
    netdef_copy = copy.deepcopy(net.Proto())
    plan = core.Plan(core.execution_step("pyop_plan_step", net))
    token = [a.s for a in plan.Proto().network[0].op[0].arg if a.name == "token"][0]
    del net
    assert not _collected(ref)
    del clone
    assert not _collected(ref)
    del netdef_copy
    assert not _collected(ref)
    # the plan alone still resolves its token for the native compiler
    func, pass_ws = _pyop.lookup(token.decode("utf-8"))
    assert callable(func) and pass_ws is False
    del func
    from fastpipe import _core
    prog = _core.Program.from_plan(plan.Proto())
    assert "pyop_plan" in prog.net_names()[0]
    del prog, plan
    assert not _collected(ref)      # our local `token` still holds it
    del token
    assert _collected(ref)


@pytest.mark.timeout(60)
def test_python_op_function_freed_after_a_run(ws):
    net, ref = _python_op_net("pyop_run")
    out = str(net.Proto().op[0].output[0])
    plan = core.Plan(core.execution_step("pyop_run_step", net))
    ws.run(plan)
    assert np.asarray(ws.blobs[out].fetch()).tolist() == [1 << 20]
    del net, plan
    assert _collected(ref)


def test_pickled_python_op_token_rebinds_while_registered():
    net, ref = _python_op_net("pyop_pickle")
    proto = pickle.loads(pickle.dumps(net.Proto()))
    token = [a.s for a in proto.op[0].arg if a.name == "token"][0]
    assert isinstance(token, _pyop.Token)
    del net
    assert not _collected(ref)      # the unpickled NetDef holds it
    del proto, token
    assert _collected(ref)


def test_python_ops_in_a_loop_of_jobs_do_not_accumulate():
    gc.collect()
    before = _pyop.registered_count()
    refs = []
    for i in range(20):
        with NetBuilder(_fullname="pyop_loop_%d" % i) as nb:
            big = _Big()
            refs.append(weakref.ref(big))
            ops.Python(lambda i, o, big=big: None)([], [])
        core.Plan(core.to_execution_step(nb))
        del nb, big
    gc.collect()
    assert all(r() is None for r in refs)
    assert _pyop.registered_count() == before


def test_lookup_signature_and_unknown_token():
    token = _pyop.register(len)
    assert _pyop.lookup(token) == (len, False)
    assert _pyop.lookup(token.decode("utf-8")) == (len, False)
    with pytest.raises(KeyError):
        _pyop.lookup("python_op:no-such")


# -- gc_paused keeps collecting garbage cycles ---------------------------------------


class _Cycle(object):
    __slots__ = ("other", "__weakref__")


@pytest.mark.timeout(120)
def test_gc_paused_regions_do_not_let_garbage_cycles_pile_up():
    """Objects made inside gc_paused skip the young collections; the cycles
    among them must still be collected (without anyone calling
    gc.collect) once enough of them were made."""
    from fastpipe import proto
    if not gc.isenabled():
        pytest.skip("the collector is off in this process")
    gc.collect()
    first = []
    per_round = 20000
    rounds = 2 * proto._FULL_COLLECTION_MIN // per_round + 10
    for r in range(rounds):
        with proto.gc_paused():
            objs = []
            for _ in range(per_round // 2):
                a, b = _Cycle(), _Cycle()
                a.other, b.other = b, a
                objs.append(a)
            if r == 0:
                first = [weakref.ref(a) for a in objs[:100]]
            del objs, a, b      # now only the cycles hold them
    assert all(w() is None for w in first)


def test_numpy_method_on_a_blob_points_at_python_processor():
    """A numpy method called on a BlobReference (a name, at build time)
    says why it cannot work and what to use instead."""
    import pytest as _pytest
    from fastpipe import core as _core
    net = _core.Net("np_hint")
    b = net.ConstantFill([], "np_hint_b", shape=[2], value=1.0)
    with _pytest.raises(AttributeError, match="PythonProcessor"):
        b.mean()
    with _pytest.raises(AttributeError, match="PythonProcessor"):
        _core.BlobReference("detached").sum()
    with _pytest.raises(AttributeError) as info:
        b.NoSuchOp()
    assert "PythonProcessor" not in str(info.value)


def test_gc_paused_keeps_a_users_gc_freeze():
    """gc.freeze() before a fork is a common pattern: building a big job
    must not unfreeze the user's objects."""
    import gc
    from fastpipe import core as _c
    from fastpipe.proto import gc_paused
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with gc_paused():
            nets = [_c.Net("freeze_%d" % i) for i in range(10000)]
        assert gc.get_freeze_count() >= frozen
        del nets
    finally:
        gc.unfreeze()
