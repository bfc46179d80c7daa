"""net_printer.to_dot / fastpipe.render / ``python -m fastpipe dot``: a
picture of a job from its description (issue 10, "A picture of a job").

The DOT text is read back with a small parser (node labels, edges and the
clusters around each node) so the tests check structure, not strings; when
Graphviz is installed, ``dot -Tsvg`` must accept every picture.
"""

import html
import os
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import fastpipe
from fastpipe import core, net_printer, pipeline, schema, session, sources
from fastpipe.checkpoint import Job
from fastpipe.errors import ArgumentError, FastpipeError
from fastpipe.net_builder import ops
from fastpipe.task import Node, Task, TaskGroup

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(fastpipe.__file__)))
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz 'dot' is not installed "
                               "(apt-get install graphviz)")


# --- reading DOT back ---------------------------------------------------------

_STR = r'"((?:[^"\\]|\\.)*)"'


def _unescape(s):
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(s[i])
            i += 1
    return html.unescape("".join(out))   # labels escape "&" as "&amp;"


class Dot(object):
    """Nodes (id -> label), edges (label -> label) and, per node, the labels
    of the clusters it is declared in (outermost first)."""

    def __init__(self, text):
        self.text = text
        self.labels = {}
        self.clusters = {}
        self.edges = set()
        stack = []
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("subgraph "):
                stack.append(None)
            elif line.startswith("label=") and stack and stack[-1] is None:
                stack[-1] = _unescape(re.match("label=" + _STR, line).group(1))
            elif line == "}" and stack:
                stack.pop()
            elif "->" in line:
                a, b = re.match(r"(\w+) -> (\w+);", line).groups()
                self.edges.add((a, b))
            else:
                m = re.match(r"(\w+) \[label=" + _STR, line)
                if m:
                    self.labels[m.group(1)] = _unescape(m.group(2))
                    self.clusters[m.group(1)] = list(stack)
        self.edges = {(self.labels[a], self.labels[b]) for a, b in self.edges}

    def node(self, first_line):
        """The one label whose first line is ``first_line``."""
        found = [v for v in self.labels.values() if v.split("\n")[0] == first_line]
        assert len(found) == 1, (first_line, sorted(self.labels.values()))
        return found[0]

    def node_starting(self, prefix):
        found = [v for v in self.labels.values() if v.startswith(prefix)]
        assert len(found) == 1, (prefix, sorted(self.labels.values()))
        return found[0]

    def cluster_of(self, label):
        (nid,) = [k for k, v in self.labels.items() if v == label]
        return self.clusters[nid]


def _dot_accepts(text, tmp_path):
    out = tmp_path / "check.svg"
    done = subprocess.run(["dot", "-Tsvg", "-o", str(out)], input=text.encode("utf-8"),
                          stderr=subprocess.PIPE, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return ET.parse(str(out))


# --- graphs -------------------------------------------------------------------

FEAT = 4


def _normalise(rec):
    y = ops.Add([ops.Mul([rec.x(), ops.Const(np.float32(2))], broadcast=1),
                 ops.Const(np.float32(1))], broadcast=1)
    return schema.Struct(("id", schema.Scalar(np.int64, rec.id())),
                         ("x", schema.Scalar((np.float32, (FEAT,)), y)))


def _make_augment(instance_id, num_instances):
    def augment(ids, x):
        return ids, x + np.float32(instance_id)
    return augment


def _three_stage(n=40, node=None):
    """source -> native stage x2 -> Python stage x2 -> queue."""
    ids = np.arange(n, dtype=np.int64)
    xs = np.ones((n, FEAT), dtype=np.float32)
    with TaskGroup() as tg:
        def build():
            src = sources.ArrayReader({"id": ids, "x": xs}, batch_size=8, name="train")
            q1 = pipeline.pipe(src, processor=_normalise, num_runtime_threads=2,
                               capacity=3)
            q2 = pipeline.pipe(q1, processor=pipeline.PythonProcessor(
                factory=_make_augment, name="augment"), num_runtime_threads=2, capacity=5)
            return q1, q2
        if node is None:
            q1, q2 = build()
        else:
            with Node(node):
                q1, q2 = build()
    return tg, q1, q2


def test_three_stage_pipe_names_stages_queues_and_edges(tmp_path):
    tg, q1, q2 = _three_stage()
    dot = Dot(net_printer.to_dot(tg))
    # the stage names pipe() gave the tasks: the processor's qualified name
    # for a function, the PythonProcessor's name
    native = dot.node("_normalise × 2")
    assert "native: GivenTensorFill, Mul, Add" in native
    python = dot.node("augment × 2")
    assert "Python stage: augment" in python
    src = dot.node("source train")      # the reader's name, as in its errors
    assert "ReadArrayBatch, batch 8" in src
    q1_label = dot.node("queue %s" % q1.queue())
    q2_label = dot.node("queue %s" % q2.queue())
    assert q1_label.endswith("capacity 3") and q2_label.endswith("capacity 5")
    assert dot.edges == {(src, native), (native, q1_label), (q1_label, python),
                         (python, q2_label)}
    assert dot.cluster_of(native) == ["node local"] == dot.cluster_of(q2_label)
    if HAVE_DOT:
        _dot_accepts(dot.text, tmp_path)


def test_default_pipe_names_and_static_copies():
    """pipe_into:<output queue>, a processor's __qualname__ (a lambda's
    place), and num_threads=N
    static copies shown as concurrent substeps of one task."""
    with TaskGroup() as tg:
        q = pipeline.pipe(sources.ArrayReader({"v": np.arange(4)}, batch_size=2,
                                              name="vals"),
                          processor=lambda rec: rec, num_threads=3)
        out = pipeline.pipe(q, output=pipeline.queue_util.Queue(capacity=2, name="sink"))
    line = test_default_pipe_names_and_static_copies.__code__.co_firstlineno + 7
    dot = Dot(net_printer.to_dot(tg))
    lam = dot.node_starting("<lambda> at test_to_dot.py:%d × 1" % line)
    assert "3 concurrent substeps" in lam
    into = dot.node("pipe_into:%s × 1" % str(out.queue())[:-len("/handler")])
    sink = dot.node("queue %s" % out.queue())
    assert sink.endswith("capacity 2") and (into, sink) in dot.edges
    assert (lam, dot.node("queue %s" % q.queue())) in dot.edges


def test_dataset_reader_is_a_source_and_writer_a_sink(ws, tmp_path):
    from pipeline_helpers import make_dataset
    src = make_dataset(ws, "src_ds", {"a": [1, 2, 3], "b": [4, 5, 6]})
    dst = make_dataset(ws, "dst_ds", {"a": [], "b": []})
    with TaskGroup() as tg:
        q = pipeline.pipe(src.reader(batch_size=2), num_runtime_threads=2, capacity=4)
        pipeline.pipe(q, dst.writer())
    text = net_printer.to_dot(tg)
    dot = Dot(text)
    source = dot.node("source src_ds")
    assert "ReadNextBatch, batch 2" in source
    reader = dot.node("pipe_from:src_ds_cursor × 2")
    writer = dot.node("pipe_into:_DatasetWriter × 1")
    queue = dot.node("queue %s" % q.queue())
    sink = dot.node("dataset dst_ds")
    assert dot.edges == {(source, reader), (reader, queue), (queue, writer), (writer, sink)}
    if HAVE_DOT:
        _dot_accepts(text, tmp_path)


@pytest.mark.timeout(60)
def test_to_dot_leaves_the_group_runnable(ws):
    """to_dot neither groups by node (which is memoised per node mapping)
    nor marks the group used: a group on a non-local node still runs after
    being drawn, and tasks can still be added."""
    tg, q1, q2 = _three_stage(n=40, node="reader")
    dot = Dot(net_printer.to_dot(tg))
    assert dot.cluster_of(dot.node("augment × 2")) == ["node reader"]
    seen = sum(len(ids) for ids, _ in session.LocalSession(ws).iterate(tg, q2))
    assert seen == 40


def test_job_groups_are_clusters(tmp_path):
    with Job() as job:
        with job.init_group:
            with Task(name="setup_counter"):
                ops.Const(np.int64(0))
        q = pipeline.pipe(sources.ArrayReader({"v": np.arange(6)}, batch_size=3,
                                              name="epoch_src"),
                          processor=lambda rec: rec, name="work", num_runtime_threads=4)
        with job.exit_group:
            Task(name="final", step=core.execution_step("final", [core.Net("final")]))
    text = net_printer.to_dot(job)
    dot = Dot(text)
    assert dot.cluster_of(dot.node("setup_counter × 1")) == ["Job init_group", "node local"]
    work = dot.node("work × 4")
    assert dot.cluster_of(work) == ["Job epoch_group", "node local"]
    assert dot.cluster_of(dot.node("final × 1")) == ["Job exit_group", "node local"]
    assert dot.cluster_of(dot.node("(no tasks)")) == ["Job download_group"]
    assert (work, dot.node("queue %s" % q.queue())) in dot.edges
    if HAVE_DOT:
        _dot_accepts(text, tmp_path)


def _hand_built_plan():
    """A Plan built from steps: [setup: create queue] then concurrently a
    writer step x3 and a reader step."""
    init = core.Net("init")
    qb = init.CreateBlobsQueue([], ["work_queue"], capacity=8, num_blobs=1)
    w = core.Net("w")
    x = w.ConstantFill([], "x", shape=[1], value=1.0)
    w.SafeEnqueueBlobs([qb, x], [x, "w_status"])
    r = core.Net("r")
    r.SafeDequeueBlobs([qb], ["y", "r_status"])
    writer = core.execution_step("writer", [w], num_concurrent_instances=3)
    reader = core.execution_step("reader", [r])
    body = core.execution_step("body", [writer, reader], concurrent_substeps=True)
    top = core.execution_step("top", [core.execution_step("setup", [init]), body])
    plan = core.Plan("hand_plan")
    plan.AddStep(top)
    return plan, top


def test_plan_and_step(tmp_path):
    plan, top = _hand_built_plan()
    for obj, outer in ((plan, ["Plan hand_plan"]), (top, [])):
        text = net_printer.to_dot(obj)
        dot = Dot(text)
        writer, reader = dot.node("writer × 3"), dot.node("reader × 1")
        queue = dot.node("queue work_queue")
        assert queue.endswith("capacity 8")
        assert dot.edges == {(writer, queue), (queue, reader)}
        assert dot.cluster_of(writer) == outer
        # the sequential setup around the concurrent body is not a box
        assert not [v for v in dot.labels.values() if v.startswith(("setup", "top"))]
        if HAVE_DOT:
            _dot_accepts(text, tmp_path)


def test_plan_of_a_lowered_group_shows_its_tasks():
    from fastpipe import _lower
    tg, q1, q2 = _three_stage()
    plan = _lower.lower_task_group(tg).plan
    dot = Dot(net_printer.to_dot(plan))
    native = dot.node("local/_normalise × 2")
    python = dot.node("local/augment × 2")
    q1_label = dot.node("queue %s" % q1.queue())
    assert q1_label.endswith("capacity 3")
    assert {(native, q1_label), (q1_label, python)} <= dot.edges


def test_compiled_group_and_compiled_job_draw_their_plans():
    tg, q1, _ = _three_stage()
    compiled = session.LocalSession.compile(tg)
    dot = Dot(net_printer.to_dot(compiled))
    assert {(dot.node("local/_normalise × 2"), dot.node("queue %s" % q1.queue()))} <= dot.edges
    with Job() as job:
        pipeline.pipe(sources.ArrayReader({"v": np.arange(6)}, batch_size=3),
                      processor=lambda rec: rec, name="work", num_runtime_threads=4)
    dot = Dot(net_printer.to_dot(job.compile(session.LocalSession)))
    assert dot.cluster_of(dot.node("local/work × 4"))[0] == "Job epoch_group"


WEIRD = 'we"ird\\name {x} <b>&amp; \\n \u00e9\nsecond line'


def test_names_are_escaped(tmp_path):
    with TaskGroup() as tg:
        with Node('node "q" \\'):
            with Task(name=WEIRD):
                net = core.Net("n")
                net.ConstantFill([], "x", shape=[1], value=1.0)
                ops.net(net)
    text = net_printer.to_dot(tg)
    dot = Dot(text)
    label = dot.node(WEIRD.split("\n")[0] + "")  # first line of the name
    assert label.startswith(WEIRD + " × 1")
    assert dot.cluster_of(label) == ['node node "q" \\']
    if HAVE_DOT:
        svg = _dot_accepts(text, tmp_path)
        texts = [t.text for t in svg.iter() if t.tag.endswith("text")]
        # rendered literally: the quote, the backslash, "\n" as two
        # characters, the HTML-ish text; the real newline splits the line
        assert 'we"ird\\name {x} <b>&amp; \\n \u00e9' in texts
        assert "second line × 1" in texts


def test_unsupported_object_is_a_clear_error():
    with pytest.raises(ArgumentError) as info:
        net_printer.to_dot(42)
    assert "int" in str(info.value) and "TaskGroup" in str(info.value)
    assert isinstance(info.value, TypeError)


# --- render -------------------------------------------------------------------


def test_render_without_dot_names_the_package(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    plan, _ = _hand_built_plan()
    with pytest.raises(net_printer.GraphvizNotFoundError) as info:
        fastpipe.render(plan, tmp_path / "job.svg")
    assert isinstance(info.value, FastpipeError)
    assert isinstance(info.value, FileNotFoundError)
    assert "apt-get install graphviz" in str(info.value) and "'dot'" in str(info.value)
    assert not (tmp_path / "job.svg").exists()
    # .dot needs no Graphviz
    fastpipe.render(plan, tmp_path / "job.dot")
    assert (tmp_path / "job.dot").read_text(encoding="utf-8") == net_printer.to_dot(plan)


def test_render_rejects_an_unknown_suffix(tmp_path):
    plan, _ = _hand_built_plan()
    with pytest.raises(ArgumentError) as info:
        fastpipe.render(plan, tmp_path / "job.jpeg")
    assert "job.jpeg" in str(info.value) and ".svg" in str(info.value)


@needs_dot
def test_render_svg_and_png(tmp_path):
    tg, _, _ = _three_stage()
    fastpipe.render(tg, tmp_path / "job.svg")
    svg = ET.parse(str(tmp_path / "job.svg"))
    texts = [t.text for t in svg.iter() if t.tag.endswith("text")]
    assert "_normalise × 2" in texts and "augment × 2" in texts
    fastpipe.render(tg, str(tmp_path / "job.png"))
    assert (tmp_path / "job.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_is_lazy_and_import_fastpipe_stays_light():
    assert fastpipe.render is net_printer.render
    code = ("import sys, fastpipe; print(sorted(m for m in sys.modules "
            "if m.startswith('fastpipe')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, timeout=60,
                         stdout=subprocess.PIPE, check=True).stdout.decode()
    assert out.strip() == "['fastpipe']"
    with pytest.raises(AttributeError):
        fastpipe.no_such_name


# --- python -m fastpipe dot ---------------------------------------------------

JOB_MODULE = textwrap.dedent('''
    import numpy as np
    from fastpipe import pipeline, sources
    from fastpipe.task import TaskGroup

    def build():
        with TaskGroup() as tg:
            q = pipeline.pipe(sources.ArrayReader({"v": np.arange(10)}, batch_size=5,
                                                  name="cli_src"),
                              processor=lambda rec: rec, name="cli_stage",
                              num_runtime_threads=3, capacity=9)
        return tg, q

    def not_a_job():
        return 7
''')


def _cli(tmp_path, *args):
    (tmp_path / "cli_job.py").write_text(JOB_MODULE)
    env = dict(os.environ, PYTHONPATH=REPO_DIR)
    return subprocess.run([sys.executable, "-m", "fastpipe", "dot"] + list(args),
                          cwd=str(tmp_path), env=env, timeout=60,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.timeout(120)
def test_cli_prints_dot(tmp_path):
    done = _cli(tmp_path, "cli_job:build")
    assert done.returncode == 0, done.stderr.decode()
    dot = Dot(done.stdout.decode("utf-8"))
    stage = dot.node("cli_stage × 3")
    assert [q for q in dot.labels.values() if q.endswith("capacity 9")]
    assert (dot.node("source cli_src"), stage) in dot.edges
    # a path to the file works too
    by_path = _cli(tmp_path, str(tmp_path / "cli_job.py") + ":build")
    assert by_path.returncode == 0 and by_path.stdout == done.stdout


@pytest.mark.timeout(120)
def test_cli_errors(tmp_path):
    missing = _cli(tmp_path, "cli_job:nope")
    assert missing.returncode != 0 and b"'nope'" in missing.stderr
    bad = _cli(tmp_path, "cli_job:not_a_job")
    assert bad.returncode == 1 and b"cannot draw a int" in bad.stderr
    no_colon = _cli(tmp_path, "cli_job")
    assert no_colon.returncode != 0 and b"MODULE:FUNCTION" in no_colon.stderr


@needs_dot
@pytest.mark.timeout(120)
def test_cli_renders_svg(tmp_path):
    done = _cli(tmp_path, "cli_job:build", "-o", "out.svg")
    assert done.returncode == 0, done.stderr.decode()
    texts = [t.text for t in ET.parse(str(tmp_path / "out.svg")).iter()
             if t.tag.endswith("text")]
    assert "cli_stage × 3" in texts
