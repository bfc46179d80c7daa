"""Static single assignment views of a net and control-op blob remapping."""

import copy as _copy

from .. import proto as _proto
from ..errors import ArgumentError


# ---------------------------------------------------------------------------
# SSA helpers


def get_ssa(net, blob_versions=None):
    """Versioned inputs/outputs of each op: ``(ssa, blob_versions)``.

    ``ssa`` is a list of ``(inputs, outputs)`` with ``(name, version)``
    tuples; version 0 of a blob means "not produced in this net (yet)".
    """
    if isinstance(net, list):
        if blob_versions is None:
            blob_versions = {}
        return [get_ssa(n, blob_versions)[0] for n in net], blob_versions
    proto = net if isinstance(net, _proto.NetDef) else getattr(net, "Proto", None)
    if callable(proto):   # a Net (ssa sits below net: no isinstance here)
        proto = proto()
    if not isinstance(proto, _proto.NetDef):
        raise ArgumentError("get_ssa: expected a Net or NetDef, got %s" % type(net).__name__)
    if blob_versions is None:
        blob_versions = {}
    for name in proto.external_input:
        if name not in blob_versions:
            blob_versions[str(name)] = 0
    ssa = []
    no_ext = not proto.external_input
    for op in proto.op:
        if no_ext:
            for name in op.input:
                if name not in blob_versions:
                    blob_versions[name] = 0
        inputs = [(name, blob_versions.get(name, 0)) for name in op.input]
        outputs = []
        for name in op.output:
            v = blob_versions.get(name, 0) + 1
            blob_versions[name] = v
            outputs.append((name, v))
        ssa.append((inputs, outputs))
    return ssa, blob_versions


def get_undefined_blobs(ssa):
    """Blobs read before any op of the net writes them."""
    undef = set()
    for inputs, _ in ssa:
        undef.update(name for name, version in inputs if version == 0)
    return undef


def get_output_producers(ssa):
    """Map ``(blob, version)`` -> index of the op producing it."""
    producers = {}
    for i, (_, outputs) in enumerate(ssa):
        for o in outputs:
            producers[o] = i
    return producers


def _remap_netdef(netdef, blob_remap, name):
    """A copy of ``netdef`` with blob names remapped (no Net is created)."""
    get = blob_remap.get
    new = _proto.NetDef()
    for field, value in netdef._set.items():
        if field != "name":
            setattr(new, field, _copy.deepcopy(value))
    new.name = name
    new.external_input = [str(get(b, b)) for b in netdef.external_input]
    new.external_output = [str(get(b, b)) for b in netdef.external_output]
    new.partition_info = list(netdef.partition_info)
    new.arg = [_copy.deepcopy(a) for a in netdef.arg]
    new_ops = new.op
    for op in netdef.op:
        op2 = _proto.copy_op_with_io(op, [str(get(b, b)) for b in op.input],
                                     [str(get(b, b)) for b in op.output])
        fn = _DEFAULT_REMAP_FUNCS.get(op2.type)
        if fn is not None:
            fn(op2, (name + "/") if name else "", blob_remap)
        new_ops.append(op2)
    return new


def control_op_remap(op, prefix, blob_remap):
    """Remap blob names inside the sub-nets of control ops (If/While)."""
    if op.type in ("If", "AsyncIf"):
        names = ("then_net", "else_net")
    else:
        names = ("loop_net", "cond_net")
    for argument in op.arg:
        if argument.name in names and argument.HasField("n"):
            sub = argument.n
            argument.n = _remap_netdef(sub, blob_remap, (sub.name or "") + "_remapped")


_DEFAULT_REMAP_FUNCS = {
    "If": control_op_remap,
    "AsyncIf": control_op_remap,
    "While": control_op_remap,
}


def _ops_in_path(ssa, blob_versions, inputs, outputs):
    # The inputs are taken at their latest version.
    inputs_set = set((str(i), blob_versions[str(i)]) for i in inputs)
    producers = get_output_producers(ssa)
    queue = [(str(o), blob_versions[str(o)]) for o in outputs]
    used = set()
    while queue:
        o = queue.pop()
        if o not in inputs_set and o in producers:
            op_id = producers[o]
            if op_id not in used:
                used.add(op_id)
                queue.extend(ssa[op_id][0])
    return sorted(used)


def _blob_versions_and_undefined(proto):
    """``(blob_versions, get_undefined_blobs(ssa))`` of ``get_ssa(proto)``
    in one pass, without building the per-op SSA lists.  Only the keys
    (in get_ssa's order) of ``blob_versions`` are meaningful."""
    names = {}
    for name in proto.external_input:
        name = str(name)
        if name not in names:
            names[name] = 0
    no_ext = not proto.external_input
    produced = set()
    undef = set()
    for op in proto.op:
        ins = op.input
        if no_ext:
            for name in ins:
                if name not in names:
                    names[name] = 0
        for name in ins:
            if name not in produced:
                undef.add(name)
        for name in op.output:
            names[name] = 1
            produced.add(name)
    return names, undef

