"""Shared helpers of the pipeline-layer runtime tests (not a test module)."""

import numpy as np

from fastpipe import core, schema
from fastpipe.dataset import Dataset


def int_struct(*names):
    return schema.Struct(*[(n, schema.Scalar(np.int64)) for n in names])


def make_dataset(ws, name, columns):
    """A Dataset whose fields (int64 scalars) hold ``columns`` (dict name ->
    values), fed into ``ws`` now."""
    ds = Dataset(int_struct(*columns), name=name)
    init = core.Net(name + "_init")
    with core.NameScope(name):  # field blob names are not net-prefixed
        ds.init_empty(init)
    ws.run(init)
    for blob, values in zip(ds.get_blobs(), columns.values()):
        ws.blobs[str(blob)].feed(np.asarray(values, dtype=np.int64))
    return ds


def make_empty_dataset(ws, name, *fields):
    return make_dataset(ws, name, {f: [] for f in fields})


def fetch_column(ws, ds, i=0):
    return np.asarray(ws.blobs[str(ds.get_blobs()[i])].fetch())


def sorted_column(ws, ds, i=0):
    return sorted(fetch_column(ws, ds, i).tolist())


def double_processor(rec):
    """rec.x -> y = 2x (int64), built with ops."""
    from fastpipe.net_builder import ops
    x = rec.field_blobs()[0]
    y = ops.Add([x, x])
    return schema.Struct(("x", schema.Scalar(np.int64, y)))


def local_session(ws):
    from fastpipe.session import LocalSession
    return LocalSession(ws)
