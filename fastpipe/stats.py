"""Process-wide stats of the native core, under Caffe2's key names.

Queues report ``<queue>/queue_balance`` (writes attempted minus reads
attempted, as Caffe2 counts it), ``queue_dequeued_records``,
``queue_dequeued_bytes`` (and ``/<field>``), ``read_time_ns/{sum,count}``
and ``write_time_ns/{sum,count}`` (time spent waiting, successful
operations only).  Timers (``TimerBegin``/``TimerEnd``, e.g. every pipe's
loop) report ``<counter_name>/time_ns/{sum,count}``.  Equal keys share one
counter, so runtime instances aggregate.

Example::

    from fastpipe import stats
    stats.reset()
    session.run(job)
    for key, value in sorted(stats.export().items()):
        print(key, value)
"""

from fastpipe import _core

__all__ = ["export", "reset"]


def export(reset=False):
    """Every stat as ``{key: int}``.  With ``reset=True`` each counter is
    zeroed atomically as it is read, so no count is lost between calls."""
    return _core.stats_export(bool(reset))


def reset():
    """Zero every stat."""
    _core.stats_export(True)
