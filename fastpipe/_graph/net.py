"""Net (an ordered list of operators over named blobs) and clone_and_bind_net."""

import copy as _copy
import threading
from collections import OrderedDict, defaultdict

import numpy as np

from .. import _opschema
from .. import proto as _proto
from ..errors import ArgumentError, AttributeNotFoundError, GraphError, NotFoundError
from . import registry as _registry
from .blob import BlobReference, ScopedBlobReference, _rectify
from .operator import MakeArgument, CreateOperator, _SPECIAL_OP_KWARGS, _register_python
from .clone import _NeedsSsaPass, clone_net as _clone_net
from .scope import CurrentNameScope, DataType, NameScope, ScopedName, _scope_local
from .ssa import (_blob_versions_and_undefined, _ops_in_path,
                  get_ssa, get_undefined_blobs)


# ---------------------------------------------------------------------------
# Net


_builder_prefix = _registry.builder_prefix


def _unique_name(basename, used, next_idx):
    """``basename`` if never handed out, else ``basename_<i>`` with the
    smallest i >= 1 not handed out; the caller holds a lock.

    The tables stay bounded in a process that builds a job per request:
    ``used`` holds only the names that were asked for (not the suffixed
    names made from them) and ``next_idx`` one counter per asked-for name,
    so fresh jobs with the same names add nothing.  A suffixed name counts
    as handed out when its suffix is below its base's counter (such a name
    may have been skipped rather than made: asking for it then gives it a
    suffix of its own, which keeps names unique)."""
    name = basename
    if _handed_out(name, used, next_idx):
        idx = next_idx.get(basename, 1)
        name = "%s_%d" % (basename, idx)
        while _handed_out(name, used, next_idx):
            idx += 1
            name = "%s_%d" % (basename, idx)
        next_idx[basename] = idx + 1
    else:
        used.add(name)
    return name


def _handed_out(name, used, next_idx):
    if name in used:
        return True
    base, sep, suffix = name.rpartition("_")
    if not sep or not suffix.isdigit() or suffix[0] == "0":
        return False
    return base in used and int(suffix) < next_idx.get(base, 1)


_object_setattr = object.__setattr__


class Net(object):
    """An ordered list of operators over named blobs.

    ``Net(name)`` creates an empty net named ``<active builder>/<name>``,
    made unique in the process with ``_1``, ``_2``... suffixes (always use
    ``str(net)``).  ``Net(netdef)`` copies a NetDef (its name is uniquified
    the same way).

    ``net.OpType(inputs, outputs=None, **args)`` appends an operator and
    returns None, one BlobReference or a tuple of them.  Unknown operator
    types raise AttributeNotFoundError; invalid arguments raise
    :class:`fastpipe.errors.OperatorDefError` (a ValueError) naming the
    operator, net and argument, and leave the net unchanged.
    """

    _net_names_used = set()
    # basename -> the next suffix to hand out: keeps naming O(1) amortised
    # instead of Caffe2's scan from _1 (see _unique_name).
    _net_name_next_idx = {}
    _names_lock = threading.Lock()  # protects the two tables above

    @staticmethod
    def current_prefix():
        return _builder_prefix()

    @staticmethod
    def _get_next_net_name(basename):
        prefix = _builder_prefix()
        basename = "/".join([x for x in (prefix, basename) if x])
        with Net._names_lock:
            return _unique_name(basename, Net._net_names_used,
                                Net._net_name_next_idx)

    def __init__(self, name_or_proto):
        self._input_record = None
        self._output_record = None
        self._registered_blob_names = set()
        self._recreate_lookup_tables = False
        self._op_outputs = set()
        self._external_input_map = set()
        self._attr_dict = defaultdict(list)
        self._next_blob_name_ids = {}
        self._next_blob_auto_ids = {}
        if isinstance(name_or_proto, _proto.NetDef):
            netdef = _copy.deepcopy(name_or_proto)
            self._net = netdef
            self._external_input_map.update(netdef.external_input)
            names = set()
            for op in netdef.op:
                names.update(op.input)
                names.update(op.output)
                self._op_outputs.update(op.output)
            auto = netdef.name + "_blob_"
            indices = []
            for s in names:
                if s.startswith(auto) and s[len(auto):].isdigit():
                    indices.append(int(s[len(auto):]))
            self._next_name_index = max(indices) + 1 if indices else 0
            name = netdef.name
        else:
            if isinstance(name_or_proto, bytes):
                name_or_proto = name_or_proto.decode("utf-8")
            elif name_or_proto is not None and not isinstance(name_or_proto, str):
                raise ArgumentError("Net() takes a name or a NetDef, got %s"
                                % type(name_or_proto).__name__)
            self._net = _proto.NetDef()
            self._next_name_index = 0
            name = name_or_proto
        self._net.name = Net._get_next_net_name(name)

    # -- identity -------------------------------------------------------------

    def Name(self):
        return self._net.name

    def __str__(self):
        return self._net.name

    def __repr__(self):
        return "Net(%r)" % self._net.name

    def Proto(self):
        """The NetDef.  Edits to it are seen (lookup tables are rebuilt)."""
        self._recreate_lookup_tables = True
        return self._net

    # -- lookup tables ----------------------------------------------------------

    def _RecreateLookupTables(self):
        outs = set()
        for op in self._net.op:
            outs.update(op.output)
        self._op_outputs = outs
        self._external_input_map = set(self._net.external_input)
        self._recreate_lookup_tables = False

    def _CheckLookupTables(self):
        outs = set()
        for op in self._net.op:
            outs.update(op.output)
        if outs - self._op_outputs:
            raise GraphError("op output lookup table out of date")
        if set(self._net.external_input) - self._external_input_map:
            raise GraphError("external input lookup table out of date")

    def BlobIsDefined(self, blob):
        """True iff ``blob`` is an op output or an external input here."""
        if self._recreate_lookup_tables:
            self._RecreateLookupTables()
        name = str(blob)
        return name in self._op_outputs or name in self._external_input_map

    def is_external_input(self, blob):
        if self._recreate_lookup_tables:
            self._RecreateLookupTables()
        return str(blob) in self._external_input_map

    def UsesBlob(self, blob):
        name = str(blob)
        for op in self._net.op:
            if name in op.input:
                return True
        return self.is_external_input(name)

    def UsedBlobNames(self):
        """The set of every blob name the net mentions."""
        names = set()
        for op in self._net.op:
            names.update(op.input)
            names.update(op.output)
        names.update(self._net.external_input)
        names.update(self._net.external_output)
        return names

    def GetBlobRef(self, blob_name):
        blob_name = str(blob_name)
        if not self.BlobIsDefined(blob_name):
            raise NotFoundError("Net does not define blob %s" % blob_name)
        return BlobReference(blob_name, self)

    # -- naming -------------------------------------------------------------------

    def NextName(self, prefix=None, output_id=None):
        """A fresh blob name: ``<net>/<prefix>`` (``_2``... if already defined
        here, checked under the current NameScope) or ``<net>_blob_<n>``.
        The returned name is NOT scoped."""
        if prefix:
            base = self._net.name + "/" + prefix
            suffix = "" if output_id is None else ":" + str(output_id)
            name = base + suffix
            key = name
            index = self._next_blob_name_ids.get(key, 2)
            scope = CurrentNameScope()
            while self.BlobIsDefined(scope + name):
                name = "%s_%d%s" % (base, index, suffix)
                index += 1
                self._next_blob_name_ids[key] = index
            return name
        name = "%s_blob_%d" % (self._net.name, self._next_name_index)
        self._next_name_index += 1
        return name

    def NextBlob(self, prefix="unnamed"):
        """A BlobReference never returned before by this net and not defined
        in it: ``prefix``, else ``prefix_auto_<i>``."""
        base = str(prefix)
        name = base
        registered = self._registered_blob_names
        if name in registered or self.BlobIsDefined(name):
            # Registered and defined names only accumulate, so the smallest
            # free index never decreases: resume from the cached one.
            cache = self._next_blob_auto_ids
            index = cache.get(base, 0)
            name = "%s_auto_%d" % (base, index)
            while name in registered or self.BlobIsDefined(name):
                index += 1
                name = "%s_auto_%d" % (base, index)
            cache[base] = index + 1
        registered.add(name)
        return BlobReference(name)

    def NextScopedBlob(self, prefix="unnamed"):
        """Like NextBlob, with the current NameScope prefix."""
        return self.NextBlob(ScopedName(prefix))

    # -- ops ------------------------------------------------------------------

    def __getattr__(self, op_type):
        if op_type.startswith("_"):
            raise AttributeNotFoundError(op_type)
        if not _opschema.is_operator(op_type):
            raise AttributeNotFoundError("Method %s is not a registered operator." % op_type)

        def create(*args, **kwargs):
            return self._CreateAndAddToSelf(op_type, *args, **kwargs)
        create.__name__ = op_type
        return create

    def __dir__(self):
        return sorted(set(dir(type(self))) | set(self.__dict__) |
                      set(_opschema.REGISTRY))

    def _CreateAndAddToSelf(self, op_type, inputs, outputs=None, **kwargs):
        if outputs is None:
            outputs = self.NextName(prefix=op_type)
        elif type(outputs) is int:
            outputs = [self.NextName(prefix=op_type, output_id=i)
                       for i in range(outputs)]
        if (_SPECIAL_OP_KWARGS.isdisjoint(kwargs) and
                getattr(_scope_local, "devicescope", None) is None):
            # Fast path (the common case): no name/engine/device/... options.
            # The fields go straight into the message (ins/outs are new lists).
            ins = _rectify(inputs)
            outs = _rectify(outputs)
            op = _proto.OperatorDef.__new__(_proto.OperatorDef)
            _object_setattr(op, "__dict__", {"type": op_type, "name": "",
                                             "input": ins, "output": outs})
            if kwargs:
                args = op.arg
                for key, value in kwargs.items():
                    if value is not None:
                        args.append(MakeArgument(key, value))
        else:
            # CreateOperator applies the NameScope itself: hand it the names
            # as given (rectifying them here too scoped them twice)
            op = CreateOperator(op_type, inputs, outputs, **kwargs)
            ins = op.input
            outs = op.output
        net = self._net
        _opschema.parse_args(op, net.name)
        if self._recreate_lookup_tables:
            self._RecreateLookupTables()
        defined_out = self._op_outputs
        ext = self._external_input_map
        for name in ins:
            if name not in defined_out and name not in ext:
                net.external_input.append(name)
                ext.add(name)
        net.op.append(op)
        defined_out.update(outs)
        if not outs:
            return None
        if len(outs) == 1:
            return BlobReference(outs[0], self)
        return tuple([BlobReference(o, self) for o in outs])

    def _ExtendOps(self, new_ops):
        self._net.op.extend(new_ops)
        if not self._recreate_lookup_tables:
            for op in new_ops:
                self._op_outputs.update(op.output)

    def extend_ops(self, new_ops):
        return self._ExtendOps(new_ops)

    def AddArgument(self, arg_name, arg_value):
        self._net.arg.append(MakeArgument(arg_name, arg_value))

    def Const(self, array, blob_out=None, dtype=None):
        """Add a fill op holding ``array``.

        A Python bool gives a 0-d BOOL ``ConstantFill``; anything else goes
        through ``np.array(array, dtype)`` and a GivenTensor fill chosen by
        dtype: int32 -> GivenTensorIntFill, int64 -> GivenTensorInt64Fill,
        str/bytes -> GivenTensorStringFill, bool -> GivenTensorBoolFill,
        anything else -> GivenTensorFill (float32).
        """
        if isinstance(array, bool):
            return self.ConstantFill([], blob_out or 1, dtype=DataType.BOOL,
                                     value=array)
        array = np.array(array) if dtype is None else np.array(array, dtype=dtype)
        kind = array.dtype.kind
        if array.dtype == np.int32:
            fill = "GivenTensorIntFill"
            values = array.ravel().tolist()
        elif array.dtype == np.int64:
            fill = "GivenTensorInt64Fill"
            values = array.ravel().tolist()
        elif kind in "US" or (kind == "O" and all(
                isinstance(v, (str, bytes)) for v in array.ravel().tolist())):
            fill = "GivenTensorStringFill"
            values = [v if isinstance(v, bytes) else str(v).encode("utf-8")
                      for v in array.ravel().tolist()]
        elif kind == "b":
            fill = "GivenTensorBoolFill"
            values = [int(v) for v in array.ravel().tolist()]
        else:
            fill = "GivenTensorFill"
            values = np.asarray(array, dtype=np.float32).ravel().tolist()
        arg_shape = _proto.Argument()
        arg_shape.name = "shape"
        arg_shape.ints = list(array.shape)
        arg_values = _proto.Argument()
        arg_values.name = "values"
        if fill == "GivenTensorStringFill":
            arg_values.strings = values
        elif fill == "GivenTensorFill":
            arg_values.floats = values
        else:
            arg_values.ints = values
        return self._CreateAndAddToSelf(fill, [], blob_out or 1,
                                        arg=[arg_shape, arg_values])

    def LogInfo(self, *msg_or_blobs):
        """Print each message (a constant string) or blob when the net runs."""
        for item in msg_or_blobs:
            if isinstance(item, BlobReference):
                blob = item
            else:
                blob = self.GivenTensorStringFill([], self.NextName("log"),
                                                  shape=[], values=[item])
            self.Print(blob, [])

    def Python(self, f, grad_f=None, python_func_type=None, pass_workspace=False,
               grad_output_indices=None, grad_input_indices=None):
        """Return ``fn(inputs, outputs, **kwargs)`` adding a ``Python`` op.

        ``f`` is a callable ``f(inputs, outputs)`` (``(inputs, outputs,
        workspace)`` with ``pass_workspace``) or a ``(factory, args,
        kwargs)`` tuple whose factory runs once per op instance at run time.
        Gradients are not supported; ``grad_f`` is accepted and ignored.
        """
        if isinstance(f, tuple) and len(f) == 3:
            f = (f[0], tuple(f[1]), dict(f[2]))
        token = _register_python(f, grad_f, python_func_type, pass_workspace)
        extra = {"token": token}
        if grad_output_indices:
            extra["grad_output_indices"] = list(grad_output_indices)
        if grad_input_indices:
            extra["grad_input_indices"] = list(grad_input_indices)

        def create(*args, **kwargs):
            kwargs.update(extra)
            return self._CreateAndAddToSelf("Python", *args, **kwargs)
        return create

    # -- external inputs/outputs ------------------------------------------------

    def AddExternalInput(self, *inputs):
        """Declare external inputs; returns one BlobReference or a list."""
        if not inputs:
            raise GraphError("AddExternalInput: no inputs given")
        if self._recreate_lookup_tables:
            self._RecreateLookupTables()
        names = []
        seen = set()
        for blob in inputs:
            name = str(blob)
            if name in self._external_input_map or name in seen:
                raise GraphError("Net %s already contains an input named %s"
                                 % (self._net.name, name))
            seen.add(name)
            names.append(name)
        self._net.external_input.extend(names)
        self._external_input_map.update(names)
        refs = [BlobReference(n, self) for n in names]
        return refs[0] if len(refs) == 1 else refs

    def AddExternalOutput(self, *outputs):
        """Declare external outputs; each must be defined in this net."""
        for blob in outputs:
            if not isinstance(blob, (BlobReference, str)):
                raise GraphError("AddExternalOutput expects BlobReferences, got %r"
                                 % (blob,))
            if not self.BlobIsDefined(blob):
                raise GraphError("%s is not defined in net %s" % (blob, self._net.name))
        self._net.external_output.extend(str(b) for b in outputs)

    def AddExternalInputs(self, *inputs):
        return self.AddExternalInput(*inputs)

    def AddExternalOutputs(self, *outputs):
        self.AddExternalOutput(*outputs)

    def AddScopedExternalInputs(self, *inputs):
        res = self.AddExternalInput(*[ScopedBlobReference(b) for b in inputs])
        return res if isinstance(res, list) else [res]

    def AddScopedExternalOutputs(self, *outputs):
        return self.AddExternalOutput(*[ScopedBlobReference(b) for b in outputs])

    @property
    def external_inputs(self):
        return [BlobReference(x, self) for x in self._net.external_input]

    @property
    def external_outputs(self):
        return [BlobReference(x, self) for x in self._net.external_output]

    # -- records ------------------------------------------------------------------

    def set_input_record(self, input_record):
        """Bind the net's input schema.  A schema without blobs gets fresh
        blobs scoped under the net name; the blobs become external inputs."""
        old = self._input_record
        if old is not None and not (
                input_record.has_blobs() and
                set(input_record.field_blobs()) == set(old.field_blobs())):
            raise GraphError("Input schema cannot be reset")
        if not input_record.has_blobs():
            with NameScope(self.Name()):
                self._input_record = _registry.schema_function("NewRecord")(self, input_record)
        else:
            self._input_record = input_record
        for blob in self._input_record.field_blobs():
            if not self.is_external_input(blob):
                self.AddExternalInput(blob)
        return self._input_record

    def set_output_record(self, record):
        """Bind the output schema; its blobs must be defined here and become
        external outputs."""
        old = self._output_record
        if old is not None and not (
                record.has_blobs() and
                set(record.field_blobs()) == set(old.field_blobs())):
            raise GraphError("Output schema cannot be reset")
        blobs = record.field_blobs()
        for blob in blobs:
            if not self.BlobIsDefined(blob):
                raise GraphError("%s is not defined in net %s" % (blob, self._net.name))
        existing = set(self._net.external_output)
        for blob in blobs:
            if str(blob) not in existing:
                self.AddExternalOutput(blob)
                existing.add(str(blob))
        self._output_record = record

    def AppendOutputRecordField(self, field_name, record):
        if self._output_record is None:
            raise GraphError("Tried to append to missing output record")
        for blob in record.field_blobs():
            if not self.BlobIsDefined(blob):
                raise GraphError("%s is not defined" % blob)
        for blob in record.field_blobs():
            self.AddExternalOutput(blob)
        self._output_record = self._output_record + _registry.schema_function("Struct")((field_name, record))

    def input_record(self):
        return self._input_record

    def output_record(self):
        return self._output_record

    # -- attributes ---------------------------------------------------------------

    def add_attribute(self, name, obj):
        """Append ``obj`` to the attribute list ``name`` (no built-in meaning)."""
        self._attr_dict[name].append(obj)

    def get_attributes(self, name):
        return self._attr_dict.get(name, [])

    # -- composition ----------------------------------------------------------------

    def AppendNet(self, net, device_option=None):
        """Append ``net``'s ops (shared, not copied) and external lists."""
        if not isinstance(net, Net):
            raise GraphError("AppendNet expects a Net, got %r" % (net,))
        if self._recreate_lookup_tables:
            self._RecreateLookupTables()
        other = net._net
        ext = self._net.external_input
        for name in other.external_input:
            if name not in self._external_input_map and name not in self._op_outputs:
                ext.append(name)
                self._external_input_map.add(name)
        outs = self._net.external_output
        outs.extend([o for o in other.external_output if o not in outs])
        ops = other.op
        if device_option is not None:
            ops = [_copy.deepcopy(op) for op in ops]
            for op in ops:
                op.device_option = _copy.deepcopy(device_option)
        self._ExtendOps(list(ops))
        return self

    def Clone(self, name, blob_remap=None, op_id_mask=None, remap_funcs=None,
              keep_schema=True, update_external_list=False):
        """A deep copy named ``name`` (uniquified), blobs renamed through
        ``blob_remap``, only ops in ``op_id_mask`` if given.  Attribute
        lists are shared with this net."""
        with _proto.gc_paused():
            return self._clone(name, blob_remap, op_id_mask, remap_funcs,
                               keep_schema, update_external_list)

    def _clone(self, name, blob_remap, op_id_mask, remap_funcs, keep_schema,
               update_external_list, bind_prefix=None):
        """Clone's body: see fastpipe._graph.clone.clone_net."""
        return _clone_net(self, name, blob_remap, op_id_mask, remap_funcs,
                          keep_schema, update_external_list,
                          Net._from_owned_proto, bind_prefix)

    @classmethod
    def _from_owned_proto(cls, netdef, op_outputs=None, blob_names=None):
        """Net(netdef) without copying ``netdef`` (the caller gives it up).
        ``op_outputs`` (a set) and ``blob_names`` (every op input and output
        name), when the caller has them, save a pass over the ops."""
        net = cls.__new__(cls)
        net._input_record = None
        net._output_record = None
        net._registered_blob_names = set()
        net._recreate_lookup_tables = False
        net._attr_dict = defaultdict(list)
        net._next_blob_name_ids = {}
        net._next_blob_auto_ids = {}
        net._net = netdef
        auto = netdef.name + "_blob_"
        if op_outputs is not None and auto in "\n".join(blob_names):
            op_outputs = None   # blob_names may hold more than the ops' names
        if op_outputs is None:
            outs = set()
            names = set()
            for op in netdef.op:
                outs.update(op.output)
                names.update(op.input)
            names.update(outs)
        else:
            outs = op_outputs
            names = ()
        net._op_outputs = outs
        net._external_input_map = set(netdef.external_input)
        indices = [int(s[len(auto):]) for s in names
                   if s.startswith(auto) and s[len(auto):].isdigit()]
        net._next_name_index = max(indices) + 1 if indices else 0
        netdef.name = Net._get_next_net_name(netdef.name)
        return net

    def ClonePartial(self, name, inputs, outputs, remap_funcs=None):
        """Clone only the ops needed to compute ``outputs`` from ``inputs``.

        Returns ``(new_net, [BlobReference...])``.  Internal blobs get the
        prefix ``name/``; ``inputs`` may be a dict old -> new, a list of
        pairs, or a list of names (kept as they are).
        """
        if isinstance(inputs, dict):
            mapping = OrderedDict((str(k), str(v)) for k, v in inputs.items())
        elif isinstance(inputs, list) and inputs and all(
                isinstance(i, tuple) and len(i) == 2 for i in inputs):
            mapping = OrderedDict((str(k), str(v)) for k, v in inputs)
        else:
            mapping = OrderedDict((str(i), str(i)) for i in inputs)
        for out in outputs:
            if not self.BlobIsDefined(out):
                raise GraphError("%s is not defined" % out)
        output_names = [str(o) for o in outputs]
        ssa, versions = get_ssa(self._net, {k: 0 for k in mapping})
        used = _ops_in_path(ssa, versions, list(mapping), output_names)
        disallowed = _ops_in_path(ssa, versions, [], list(mapping))
        if set(used) & set(disallowed):
            raise GraphError("Cannot partially clone net: some of the ops "
                             "required would generate the given input.")
        sub = [ssa[i] for i in used]
        undef = get_undefined_blobs(sub) - set(mapping)
        prefix = (name + "/") if name else ""

        def remap(b):
            if b in mapping:
                return mapping[b]
            if b in undef:
                return b
            return prefix + b
        blob_mapping = {b: remap(b) for b in versions}
        new_net = self.Clone(name, blob_mapping, used, remap_funcs)
        new_in = [blob_mapping[i] for i in mapping] + sorted(undef)
        new_out = [blob_mapping[o] for o in output_names]
        new_net._net.external_input = new_in
        new_net._net.external_output = new_out
        new_net._RecreateLookupTables()
        return new_net, [new_net.GetBlobRef(o) for o in new_out]


def clone_and_bind_net(net, name, prefix, blob_remap=None, inputs=None,
                       keep_schema=True):
    """Clone ``net`` renaming the blobs it produces to ``prefix + name``.

    Blobs only read by the net (e.g. parameters) keep their names.  With
    ``inputs`` (a schema record), the net's input record is rebound to it:
    the net's input field names must be a subset of ``inputs``'.
    Returns ``(cloned_net, blob_remap)``.  Cost is O(net size).
    """
    if not isinstance(net, Net):
        raise GraphError("clone_and_bind_net expects a Net, got %r" % (net,))
    blob_remap = {} if blob_remap is None else blob_remap
    if inputs is not None:
        if not isinstance(inputs, _registry.schema_function("Field")):
            raise GraphError("inputs must be a schema.Field, got %r" % (inputs,))
        original = net.input_record()
        if original is None:
            raise GraphError("net %s has no input record to bind" % net.Name())
        diff = set(original.field_names()) - set(inputs.field_names())
        if diff:
            raise GraphError(
                "Schemas don't match, extra fields %s found in the net %s. "
                "original: %s; inputs: %s" % (sorted(diff), net.Name(),
                                              original.field_names(),
                                              inputs.field_names()))
        original_mapping = dict(zip(original.field_names(), original.field_blobs()))
        for fn, fb in zip(inputs.field_names(), inputs.field_blobs()):
            if fn in original_mapping:
                blob_remap[str(original_mapping[fn])] = str(fb)
    with _proto.gc_paused():
        saved = dict(blob_remap)
        try:
            # one pass: blobs are mapped as the clone meets them
            cloned = net._clone(name, blob_remap, None, None, keep_schema, False,
                                bind_prefix=prefix)
        except _NeedsSsaPass:
            blob_remap.clear()
            blob_remap.update(saved)
            versions, undef = _blob_versions_and_undefined(net._net)
            for blob in versions:
                if blob in blob_remap:
                    continue
                blob_remap[blob] = blob if blob in undef else prefix + blob
            cloned = net.Clone(name, blob_remap, keep_schema=keep_schema)
    if not keep_schema and inputs:
        cloned.set_input_record(inputs)
    return cloned, blob_remap


