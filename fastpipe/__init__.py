"""fastpipe: the Caffe2 pipeline stack with a native, nogil core.

Import the modules by their Caffe2 names::

    from fastpipe import core, workspace, pipeline, queue_util, ...
"""

__version__ = "0.1.0"
