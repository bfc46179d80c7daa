# cython: language_level=3, embedsignature=True
# distutils: language = c++
"""fastpipe's native core: blobs, workspaces, kernels, queues and the plan
executor.  Everything on the per-record path runs without the GIL on native
threads; see DESIGN.md."""

from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.stdlib cimport malloc, calloc, free, realloc
from libc.string cimport memcpy, memset
from libc.stdio cimport snprintf
from libcpp.string cimport string
from libcpp.vector cimport vector
from libcpp.utility cimport pair
from libcpp.unordered_map cimport unordered_map
from cython.operator cimport dereference as deref, preincrement as inc
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from cpython.exc cimport PyErr_CheckSignals
from cpython.pystate cimport PyThreadState_SetAsyncExc
from cpython.pythread cimport PyThread_get_thread_ident
cimport numpy as cnp
cimport cython

from fastpipe.includes.native cimport *

cnp.import_array()

include "_core/base.pxi"
include "_core/runtime.pxi"
include "_core/kernels.pxi"
include "_core/dataops.pxi"
include "_core/queue.pxi"
include "_core/rebatch.pxi"
include "_core/control.pxi"
include "_core/lower.pxi"
include "_core/api.pxi"
include "_core/pyop.pxi"
include "_core/textfile.pxi"
include "_core/textwrite.pxi"
include "_core/register.pxi"
include "_core/savedb.pxi"
include "_core/dataset.pxi"
include "_core/segments.pxi"
include "_core/iterate.pxi"
