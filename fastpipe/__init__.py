"""fastpipe: the Caffe2 pipeline stack with a native, nogil core.

Import the modules by their Caffe2 names::

    from fastpipe import core, workspace, pipeline, queue_util, ...
"""

__version__ = "0.1.0"


def __getattr__(name):
    # ``fastpipe.render`` is imported on first use, so ``import fastpipe``
    # stays free of the graph modules.
    if name == "render":
        from .net_printer import render
        return render
    raise AttributeError("module 'fastpipe' has no attribute %r" % name)
