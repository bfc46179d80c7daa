"""The graph layer: blobs, nets, execution steps and plans.

This is Caffe2's ``caffe2.python.core`` for pipeline code: it builds a
description (plain-Python :mod:`fastpipe.proto` messages) and never touches
data.  Everything here is cheap -- adding an operator is a handful of
dictionary operations plus schema validation -- and nothing ever loops over
runtime instances.

Example::

    from fastpipe import core

    net = core.Net('init')
    one = net.Const(1.0)
    two = net.Add([one, one])          # BlobReference('init/Add')
    step = core.execution_step('main', net, num_iter=3)
    plan = core.Plan(step)

Threading: building a single Net or ExecutionStep from several threads at
once is not supported (as in Caffe2).  The process-wide name registries
(net and step names) and the name scope are thread-safe; the name scope is
thread-local.

Where things live: this module only re-exports.  The code is in the private
package :mod:`fastpipe._graph` -- ``scope`` (DataType, NameScope,
DeviceScope), ``blob`` (BlobReference), ``operator`` (MakeArgument,
CreateOperator, Python op registration), ``ssa`` (get_ssa and friends),
``clone`` (Net.Clone's copy loop), ``net`` (Net, clone_and_bind_net) and
``step`` (ExecutionStep, Plan, execution_step).  Those modules sit below
``net_builder`` and ``schema``, which register what the graph layer needs
from them in ``fastpipe._graph.registry``.
"""

from collections import OrderedDict, defaultdict  # noqa: F401 (names core had)

import fastpipe as _fastpipe_package

from .errors import AttributeNotFoundError as _AttributeNotFoundError
from .errors import GraphError  # noqa: F401
from ._graph.scope import (  # noqa: F401
    _NAMESCOPE_SEPARATOR, _scope_local, CurrentDeviceScope, CurrentNameScope,
    DataType, DeviceOption, DeviceScope, IsOperator, NameScope, ScopedName)
from ._graph.blob import (  # noqa: F401
    BlobReference, ScopedBlobReference, _blob_name, _rectify)
from ._graph.operator import (  # noqa: F401
    _SPECIAL_OP_KWARGS, _py_scalar, _register_python, CreateOperator,
    CreatePythonOperator, MakeArgument)
from ._graph.ssa import (  # noqa: F401
    _DEFAULT_REMAP_FUNCS, _blob_versions_and_undefined, _ops_in_path,
    _remap_netdef, control_op_remap, get_output_producers, get_ssa,
    get_undefined_blobs)
from ._graph.clone import (  # noqa: F401
    _NeedsSsaPass, _chain_from_iterable, _get_output)
from ._graph.net import (  # noqa: F401
    _builder_prefix, _object_setattr, _unique_name, Net, clone_and_bind_net)
from ._graph.step import (  # noqa: F401
    _add_net_to_dict, add_nets_in_order, ExecutionStep, execution_step,
    get_net_name, output_to_list, Plan, scoped_execution_step,
    to_execution_step)


__all__ = [
    "DataType", "IsOperator", "BlobReference", "ScopedName",
    "ScopedBlobReference", "NameScope", "CurrentNameScope", "DeviceScope",
    "CurrentDeviceScope", "DeviceOption", "CreateOperator",
    "CreatePythonOperator", "MakeArgument", "Net", "ExecutionStep", "Plan",
    "execution_step", "scoped_execution_step", "to_execution_step",
    "clone_and_bind_net", "get_ssa", "get_undefined_blobs",
    "get_output_producers", "get_net_name", "output_to_list",
    "add_nets_in_order",
]



def __getattr__(name):
    """``core.workspace`` is the workspace module, as in Caffe2 (whose core
    imports it at the top).  Importing ``fastpipe.core`` alone must load
    nothing above the graph layer (the workspace module loads the native
    core), so the module comes from the package's lazy attribute
    (``fastpipe.__getattr__``) on first use."""
    if name == "workspace":
        return _fastpipe_package.workspace
    raise _AttributeNotFoundError("module %r has no attribute %r" % (__name__, name))
