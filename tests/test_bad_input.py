"""Bad input never crashes the interpreter and never hangs: each category
raises a clear exception -- at graph-build/compile time where it can be
known then, otherwise at run time -- naming what was wrong.  Run-time
errors are also raised while a peer is blocked on a queue, so a bad record
cannot hang a run.  Inputs that could crash the process run in a
subprocess."""
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from fastpipe import core, schema, workspace
from fastpipe.dataio import CountUntil
from fastpipe.errors import (FastpipeError, GraphError, OperatorDefError, PlanError,
                             RunError)
from fastpipe.net_builder import ops
from fastpipe.pipeline import pipe
from fastpipe.queue_util import Queue
from fastpipe.session import LocalSession
from fastpipe.task import Task, TaskGroup

from reliability_helpers import DT, victim_steps

ROOT = __file__.rsplit("/tests/", 1)[0]

pytestmark = pytest.mark.timeout(60)   # tests below may set their own


def _run_with_blocked_peer(bad_net, blocked="empty", step_name="bad_step"):
    """Run bad_net in a step concurrent with a peer blocked on a queue."""
    ev = threading.Event()
    init = core.Net("bi_init")
    victim = victim_steps(init, blocked, ev)
    wait = core.Net("bi_wait")
    wait.Python(lambda i, o: ev.wait(20))([], [])
    plan = core.Plan("bad_input")
    plan.AddStep(core.execution_step("bi_init", init))
    plan.AddStep(core.execution_step("bi_run", [
        core.execution_step(step_name, [wait, bad_net]), victim], concurrent_substeps=True))
    return workspace.RunPlan(plan)


def _net(name, build):
    net = core.Net(name)
    build(net)
    return net


# -- unknown op types ----------------------------------------------------------------

def test_unknown_op_type():
    with pytest.raises(AttributeError, match="NotAnOp is not a registered operator"):
        core.Net("unk").NotAnOp([], ["y"])
    net = core.Net("unk_proto")            # smuggled in through the proto
    op = net.Proto().op.add()
    op.type = "NotAnOp"
    op.output.append("y")
    with pytest.raises(OperatorDefError, match="NotAnOp in net 'unk_proto(_\\d+)?': "
                                               "unknown operator type 'NotAnOp'"):
        workspace.RunNetOnce(net)


# -- wrong arity ---------------------------------------------------------------------------

def test_wrong_arity():
    with pytest.raises(OperatorDefError, match="Add in net 'ar(_\\d+)?': takes exactly 2 inputs, "
                                               "got 1"):
        core.Net("ar").Add(["x"], "y")
    with pytest.raises(OperatorDefError, match="takes exactly 2 inputs, got 3"):
        core.Net("ar3").Add(["x", "y", "z"], "w")


@pytest.mark.timeout(30)
def test_wrong_record_arity_on_queue_at_run_time():
    init = core.Net("ra_init")
    init.CreateBlobsQueue([], "ra_q", capacity=1, num_blobs=1)
    workspace.RunNetOnce(init)
    bad = core.Net("ra_bad")
    bad.SafeDequeueBlobs(["ra_q"], ["o1", "o2", "ra_st"])
    with pytest.raises(RunError, match=r"SafeDequeueBlobs #0 in net 'ra_bad(_\d+)?' "
                                       r"\(step 'bad_step'\): queue 'ra_q' holds 1 blobs per "
                                       r"record, but the op has 2 data outputs"):
        _run_with_blocked_peer(bad)


# -- wrong argument types ---------------------------------------------------------------------

def test_wrong_argument_types():
    with pytest.raises(OperatorDefError, match="ConstantFill in net 'at(_\\d+)?': argument 'shape' "
                                               "expects a list of ints"):
        core.Net("at").ConstantFill([], "y", shape="abc")
    with pytest.raises(OperatorDefError, match="unknown argument 'shap'"):
        core.Net("at2").ConstantFill([], "y", shap=[2])
    with pytest.raises(OperatorDefError, match="capacity"):
        core.Net("at3").CreateBlobsQueue([], "q", capacity="big")


@pytest.mark.timeout(30)
def test_wrong_value_type_for_dtype_at_run_time():
    bad = _net("vt_bad", lambda n: n.ConstantFill([], "vt_y", shape=[2], value="hello",
                                                   dtype=DT.FLOAT))
    with pytest.raises(RunError, match=r"ConstantFill #0 in net 'vt_bad(_\d+)?' \(step "
                                       r"'bad_step'\): argument 'value' has the wrong field"):
        _run_with_blocked_peer(bad)


def test_wrong_type_of_step_field():
    net = _net("nit", lambda n: n.ConstantFill([], "nit_y", shape=[1], value=1.0))
    with pytest.raises((GraphError, PlanError), match="num_iter"):
        workspace.RunPlan(core.Plan(core.execution_step("nit_step", net, num_iter="x")))


# -- shape and dtype mismatches -----------------------------------------------------------------

@pytest.mark.timeout(30)
def test_shape_and_dtype_mismatch():
    workspace.FeedBlob("sm_a", np.ones(2, np.float32))
    workspace.FeedBlob("sm_b", np.ones(3, np.float32))
    workspace.FeedBlob("sm_i", np.ones(2, np.int64))
    with pytest.raises(RunError, match=r"Add #0 in net 'sm_shape(_\d+)?' \(step 'bad_step'\): "
                                       r"Dimension mismatch float32\[2\] vs float32\[3\]"):
        _run_with_blocked_peer(_net("sm_shape", lambda n: n.Add(["sm_a", "sm_b"], "sm_c")))
    with pytest.raises(RunError, match=r"Add #0 in net 'sm_dtype(_\d+)?' \(step 'bad_step'\): "
                                       r"inputs have different dtypes: float32\[2\] and "
                                       r"int64\[2\]"):
        _run_with_blocked_peer(_net("sm_dtype", lambda n: n.Add(["sm_a", "sm_i"], "sm_c")),
                               blocked="full")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("second", [np.zeros((1, 4), np.float32), np.zeros((1, 3), np.int32)],
                         ids=["inner_shape", "dtype"])
def test_safe_dequeue_batching_mismatched_records_in_a_pipeline(second):
    """Records of different inner shapes (or dtypes) reach a SafeDequeueBlobs
    with num_records > 1 while its producer is blocked on the full queue."""
    first = np.zeros((1, 3), np.float32)
    init = core.Net("sd_init")
    init.CreateBlobsQueue([], "sd_q", capacity=2, num_blobs=1)
    workspace.RunNetOnce(init)
    workspace.FeedBlob("sd_first", first)
    workspace.FeedBlob("sd_second", second)
    prod = core.Net("sd_prod")
    prod.Copy("sd_first", "sd_rec1")
    prod.EnqueueBlobs(["sd_q", "sd_rec1"], ["sd_rec1"])
    prod.Copy("sd_second", "sd_rec2")
    prod.EnqueueBlobs(["sd_q", "sd_rec2"], ["sd_rec2"])
    for i in range(3):    # blocks: nobody reads until the batch below fails
        prod.Copy("sd_first", "sd_more%d" % i)
        prod.EnqueueBlobs(["sd_q", "sd_more%d" % i], ["sd_more%d" % i])
    cons = core.Net("sd_cons")
    cons.SafeDequeueBlobs(["sd_q"], ["sd_batch", "sd_st"], num_records=2)
    plan = core.Plan("sd")
    plan.AddStep(core.execution_step("sd_run", [core.execution_step("sd_p", prod),
                                                core.execution_step("sd_c", cons)],
                                     concurrent_substeps=True))
    with pytest.raises(RunError, match=r"SafeDequeueBlobs #0 in net 'sd_cons(_\d+)?' \(step "
                                       r"'sd_c'\): cannot batch records of queue 'sd_q'"):
        workspace.RunPlan(plan)


# -- stop blob that is not a bool scalar ----------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("value,got", [
    (np.array(1, np.int64), "int64"),
    (np.array(1.0, np.float32), r"float32\[\]"),
    (np.array([True, False]), r"bool\[2\]"),
    (None, "queue"),
])
def test_stop_blob_not_a_bool_scalar(value, got):
    if value is None:
        workspace.RunNetOnce(_net("sb_q", lambda n: n.CreateBlobsQueue([], "sb_stop", capacity=1,
                                                                      num_blobs=1)))
    else:
        workspace.FeedBlob("sb_stop", value)
    body = _net("sb_body", lambda n: n.ConstantFill([], "sb_y", shape=[1], value=1.0))
    with pytest.raises(RunError, match=r"step 'sb_loop': should_stop_blob 'sb_stop' expects a "
                                       r"scalar boolean, got %s" % got):
        workspace.RunPlan(core.Plan(core.execution_step("sb_loop", body,
                                                        should_stop_blob="sb_stop")))


@pytest.mark.timeout(30)
def test_processor_stop_signal_not_a_bool():
    """A processor returning (record, int64 stop) in a pipe: the pipe ORs it
    into its bool status, which fails naming the net and both dtypes."""
    def proc(rec):
        return rec, ops.ConstantFill([], shape=[], value=1, dtype=DT.INT64)
    with TaskGroup() as tg:
        q = pipe(CountUntil(10), processor=proc, capacity=1, name="badstop")
        pipe(q, processor=lambda rec: None, name="badstop_drain")
    with pytest.raises(RunError, match=r"in net '[^']*badstop[^']*' \(step '[^']+'"
                                       r"(, instance \d+)?\): inputs have different dtypes: "
                                       r"bool\[\] and int64\[\]"):
        LocalSession().run(tg)


# -- a net referenced but not in the plan --------------------------------------------------

def test_net_referenced_but_not_in_plan():
    plan = core.Plan("nr")
    plan.AddStep(core.execution_step("nr_step", _net("nr_real", lambda n: n.ConstantFill(
        [], "nr_y", shape=[1], value=1.0))))
    proto = plan.Proto()
    proto.execution_step[0].network.append("ghost_net")
    with pytest.raises(PlanError, match="step 'nr_step' uses undefined net 'ghost_net'"):
        workspace.RunPlan(proto)


# -- a blob read before it is written -------------------------------------------------------

def test_blob_read_before_written():
    with pytest.raises(PlanError, match=r"Copy #0 in net 'rb(_\d+)?': input blob 'rb_nothing' "
                                        r"does not exist \(it is read before any net writes it\)"):
        workspace.RunNetOnce(_net("rb", lambda n: n.Copy("rb_nothing", "rb_y")))
    reader = _net("rb_reader", lambda n: n.Copy("rb_later", "rb_y"))
    writer = _net("rb_writer", lambda n: n.ConstantFill([], "rb_later", shape=[1], value=1.0))
    with pytest.raises(PlanError, match=r"net 'rb_reader(_\d+)?': input blob 'rb_later'"):
        workspace.RunPlan(core.Plan(core.execution_step("rb_step", [reader, writer])))


@pytest.mark.timeout(30)
def test_blob_read_before_written_inside_an_instance_while_peer_blocked():
    """Known only when the instance's workspace is compiled (run time)."""
    ev = threading.Event()
    init = core.Net("ri_init")
    victim = victim_steps(init, "empty", ev)
    wait = _net("ri_wait", lambda n: n.Python(lambda i, o: ev.wait(20))([], []))
    bad = _net("ri_bad", lambda n: n.Copy("ri_nothing", "ri_y"))
    inst = core.execution_step("ri_inst", [core.execution_step("ri_wait", wait),
                                           core.execution_step("ri_inner", [
                                               core.execution_step("ri_bad", bad)],
                                               create_workspace=True)])
    plan = core.Plan("ri")
    plan.AddStep(core.execution_step("ri_init", init))
    plan.AddStep(core.execution_step("ri_run", [inst, victim], concurrent_substeps=True))
    with pytest.raises(PlanError, match=r"Copy #0 in net 'ri_bad(_\d+)?': input blob 'ri_nothing'"):
        workspace.RunPlan(plan)


# -- a queue used before creation ------------------------------------------------------------

@pytest.mark.timeout(30)
def test_queue_used_before_creation():
    with pytest.raises(PlanError, match=r"SafeEnqueueBlobs #0 in net 'qb(_\d+)?': input blob "
                                        r"'qb_noq' does not exist"):
        workspace.FeedBlob("qb_x", np.ones(1, np.float32))
        workspace.RunNetOnce(_net("qb", lambda n: n.SafeEnqueueBlobs(["qb_noq", "qb_x"],
                                                                      ["qb_x", "qb_st"])))
    use = _net("qb_use", lambda n: n.SafeDequeueBlobs(["qb_later"], ["qb_o", "qb_st"]))
    make = _net("qb_make", lambda n: n.CreateBlobsQueue([], "qb_later", capacity=1, num_blobs=1))
    with pytest.raises(PlanError, match=r"net 'qb_use(_\d+)?': input blob 'qb_later' does not "
                                        r"exist"):
        workspace.RunPlan(core.Plan(core.execution_step("qb_step", [
            core.execution_step("qb_u", use), core.execution_step("qb_m", make)])))
    workspace.FeedBlob("qb_tensor", np.ones(2, np.float32))
    with pytest.raises(RunError, match=r"input 0 \('qb_tensor'\) is not a queue \(it holds a "
                                       r"tensor float32\[2\]\)"):
        _run_with_blocked_peer(_net("qb_t", lambda n: n.SafeDequeueBlobs(
            ["qb_tensor"], ["qb_o2", "qb_st2"])))


def test_pipeline_queue_without_schema():
    with TaskGroup():
        with pytest.raises(GraphError, match="Queue needs a schema in order to be read from"):
            pipe(Queue(2, name="noschema_q"), processor=lambda rec: rec)


# -- num_instances <= 0 ---------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, -1])
def test_task_num_instances_not_positive(n):
    with TaskGroup():
        with pytest.raises(GraphError, match="num_instances=%d must be an int >= 1" % n):
            Task(name="ni_task", num_instances=n)


def test_pipe_num_runtime_threads_negative():
    with TaskGroup():
        with pytest.raises(GraphError, match="num_runtime_threads=-1 must be >= 0"):
            pipe(CountUntil(3), num_runtime_threads=-1)


def _instances_plan(n):
    inner = core.execution_step("ni_inner", _net("ni_body", lambda net: net.ConstantFill(
        [], "ni_y", shape=[1], value=1.0)), create_workspace=True)
    return core.Plan(core.execution_step("ni_par", [inner], num_concurrent_instances=n))


def test_step_num_concurrent_instances_negative():
    with pytest.raises(PlanError, match="step 'ni_par': num_concurrent_instances=-1 must be >= 1"):
        workspace.RunPlan(_instances_plan(-1))


def test_step_num_concurrent_instances_zero():
    with pytest.raises(PlanError, match="num_concurrent_instances=0 must be >= 1"):
        workspace.RunPlan(_instances_plan(0))


# -- capacity <= 0 ------------------------------------------------------------------------------

@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_not_positive(capacity):
    with pytest.raises(OperatorDefError, match="CreateBlobsQueue in net 'cap(_\\d+)?': "
                                               "capacity=%d must be >= 1" % capacity):
        core.Net("cap").CreateBlobsQueue([], "cap_q", capacity=capacity)
    with pytest.raises(GraphError, match="capacity=%d must be >= 1" % capacity):
        Queue(capacity, name="cap_queue")
    with TaskGroup():
        with pytest.raises(GraphError, match="capacity=%d must be >= 1" % capacity):
            pipe(CountUntil(3), capacity=capacity)


def test_other_queue_arguments_not_positive():
    with pytest.raises(OperatorDefError, match="num_blobs=0 must be >= 1"):
        core.Net("nb").CreateBlobsQueue([], "nb_q", capacity=1, num_blobs=0)
    with pytest.raises(OperatorDefError, match="num_records=-1 must be >= 1"):
        core.Net("nr").SafeDequeueBlobs(["q"], ["o", "s"], num_records=-1)


# -- exceptions are FastpipeErrors and the builtin they resemble ------------------------------

def test_exception_tree():
    for cls, builtin in [(OperatorDefError, ValueError), (PlanError, ValueError),
                         (RunError, RuntimeError), (GraphError, ValueError)]:
        assert issubclass(cls, FastpipeError) and issubclass(cls, builtin)


# -- inputs that could crash the process: run in a subprocess ---------------------------------

def _subprocess(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(90)
def test_absurd_shape_raises_instead_of_crashing():
    out = _subprocess("""
        from fastpipe import core, workspace
        net = core.Net('huge')
        net.ConstantFill([], 'y', shape=[1 << 62], value=1.0)
        try:
            workspace.RunNetOnce(net)
        except (MemoryError, ValueError, RuntimeError) as e:
            print('raised', type(e).__name__, e)
        """)
    assert out.returncode == 0, "interpreter died (rc=%d): %s" % (out.returncode, out.stderr[-500:])
    assert "raised" in out.stdout and "huge" in out.stdout


@pytest.mark.timeout(90)
def test_shape_whose_size_overflows_is_rejected():
    out = _subprocess("""
        from fastpipe import core, workspace
        net = core.Net('wrap')
        net.ConstantFill([], 'y', shape=[1 << 32, 1 << 32], value=1.0)
        try:
            workspace.RunNetOnce(net)
            print('accepted')
        except (MemoryError, ValueError, RuntimeError) as e:
            print('raised', type(e).__name__, e)
        """)
    assert out.returncode == 0, out.stderr[-500:]
    assert "raised" in out.stdout and "wrap" in out.stdout, out.stdout


@pytest.mark.timeout(90)
def test_bad_python_op_return_and_feed_do_not_crash():
    """A Python op feeding an unsupported dtype or an absurd reshape fails the
    run with the op named."""
    def feed_object(inputs, outputs):
        outputs[0].feed(np.array([object()]))
    with pytest.raises(RunError, match=r"Python #0 in net 'po(_\d+)?'.*raised"):
        workspace.RunNetOnce(_net("po", lambda n: n.Python(feed_object)([], ["po_y"])))

    def bad_reshape(inputs, outputs):
        outputs[0].reshape([-3])
    with pytest.raises(RunError, match=r"Python #0 in net 'po2(_\d+)?'.*(ValueError|ArgumentError): bad shape"):
        workspace.RunNetOnce(_net("po2", lambda n: n.Python(bad_reshape)([], ["po2_y"])))


def test_pipeline_record_schema_mismatch_is_a_clear_error():
    """Writing a 2-field record into a queue made for 1 field."""
    q = Queue(2, schema=schema.Struct(("a", schema.Scalar(np.int64))), name="sch_q")

    def two_fields(rec):
        return schema.Struct(("a", rec.iter), ("b", rec.iter))
    with TaskGroup() as tg:
        pipe(CountUntil(3), q, processor=two_fields, name="sch")
        pipe(q, processor=lambda rec: rec, name="sch_read")
    with pytest.raises(FastpipeError, match="sch"):
        LocalSession().run(tg)


def test_an_int_argument_beyond_64_bits_is_an_operator_def_error():
    from fastpipe import core, workspace
    from fastpipe.errors import OperatorDefError
    net = core.Net("huge_arg")
    c = net.ConstantFill([], "huge_arg_c", shape=[1], value=1.0)
    net.Print([c], [], every_n=2 ** 70)
    with pytest.raises(OperatorDefError, match="every_n"):
        workspace.C.Workspace().run(net)
