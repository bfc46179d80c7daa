"""fastpipe: the Caffe2 pipeline stack with a native, nogil core.

Import the modules by their Caffe2 names::

    from fastpipe import core, workspace, pipeline, queue_util, ...
"""

__version__ = "0.1.0"


def __getattr__(name):
    """Lazy attributes (PEP 562), so ``import fastpipe`` stays free of the
    graph modules and the native core:

    * ``fastpipe.render`` (``net_printer.render``);
    * ``fastpipe.progress`` (``observe.progress``);
    * ``fastpipe.workspace``, so that ``core.workspace`` -- Caffe2's core
      exposes its workspace module -- works while importing
      ``fastpipe.core`` alone still loads no native code."""
    if name == "render":
        from .net_printer import render
        return render
    if name == "progress":
        from .observe import progress
        return progress
    if name == "workspace":
        # (``from . import workspace`` would look the attribute up first and
        # come back here)
        import sys
        import fastpipe.workspace  # noqa: F401 (sets the attribute)
        return sys.modules["fastpipe.workspace"]
    from .errors import AttributeNotFoundError
    raise AttributeNotFoundError("module %r has no attribute %r" % (__name__, name))
