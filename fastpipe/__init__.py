"""fastpipe: the Caffe2 pipeline stack with a native, nogil core.

Import the modules by their Caffe2 names::

    from fastpipe import core, workspace, pipeline, queue_util, ...
"""

__version__ = "0.1.0"


def __getattr__(name):
    """``fastpipe.workspace`` loads on first use (PEP 562), so that
    ``core.workspace`` -- Caffe2's core exposes its workspace module -- works
    while importing ``fastpipe.core`` alone still loads no native code."""
    if name == "workspace":
        # (``from . import workspace`` would look the attribute up first and
        # come back here)
        import sys
        import fastpipe.workspace  # noqa: F401 (sets the attribute)
        return sys.modules["fastpipe.workspace"]
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
