"""A consumer fails while its producers are blocked on a full queue: the run
raises (no hang, no abort), naming the failing operator, and every thread
is joined.  Caffe2 aborted the process or hung here."""
import threading
import time

import numpy as np
import pytest

from fastpipe import core, schema, session, workspace
from fastpipe.dataset import Dataset
from fastpipe.errors import RunError
from fastpipe.net_builder import ops
from fastpipe.pipeline import pipe
from fastpipe.task import TaskGroup


def _source(ws, n):
    ds = Dataset(schema.Struct(("x", schema.Scalar(np.int64))), name="cf_src")
    init = core.Net("cf_init")
    with core.NameScope("cf_src"):
        ds.init_empty(init)
    ws.run(init)
    ws.blobs[str(ds.get_blobs()[0])].feed(np.arange(n, dtype=np.int64))
    return ds


@pytest.mark.timeout(60)
@pytest.mark.parametrize("producers", [1, 4])
def test_consumer_failure_while_producers_block_on_full_queue(producers):
    ws = workspace.C.Workspace()
    src = _source(ws, 100000)
    seen = [0]
    producers_blocked = threading.Event()
    failed_at = []

    def consume(inputs, outputs):
        seen[0] += 1
        if seen[0] == 3:
            # By now the queue (capacity 1) is full and the producers wait on it.
            producers_blocked.set()
            failed_at.append(time.monotonic())
            raise ValueError("trainer diverged")

    def trainer(rec):
        ops.Python(consume)(rec.field_blobs(), [])
        return None

    with TaskGroup() as tg:
        q = pipe(src.reader(batch_size=1), num_runtime_threads=producers, capacity=1)
        pipe(q, processor=trainer, num_runtime_threads=1)
    with pytest.raises(RunError, match="Python.*ValueError: trainer diverged") as info:
        session.LocalSession(ws).run(tg)
    raised_at = time.monotonic()
    assert isinstance(info.value.__cause__, ValueError)
    assert producers_blocked.is_set()
    # The failure wakes the blocked producers: no waiting for the data to run out.
    assert raised_at - failed_at[0] < 5.0
