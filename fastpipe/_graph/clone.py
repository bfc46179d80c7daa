"""Net.Clone's one-pass copy of a net's operators with renamed blobs (also
clone_and_bind_net's)."""

import copy as _copy
import operator as _operator
from itertools import chain as _chain

from .. import proto as _proto
from . import registry as _registry
from .blob import BlobReference
from .ssa import _DEFAULT_REMAP_FUNCS

_chain_from_iterable = _chain.from_iterable
_get_output = _operator.attrgetter("output")


class _NeedsSsaPass(Exception):
    """clone_net(bind_prefix=...) met an op whose remap function needs the
    complete blob map up front."""


def clone_net(net, name, blob_remap, op_id_mask, remap_funcs, keep_schema,
              update_external_list, from_owned_proto, bind_prefix=None):
    """Net.Clone's body (``from_owned_proto``: Net._from_owned_proto).  With ``bind_prefix`` (clone_and_bind_net), the
    blobs missing from ``blob_remap`` are mapped while cloning, in one
    pass, with clone_and_bind_net's rule: a blob read before any op
    writes it keeps its name, the others get the prefix; ``blob_remap``
    gets an entry for every blob get_ssa versions.  Raises
    _NeedsSsaPass if an op has a remap function (If/While), which would
    need the complete map before the loop ends."""
    funcs = dict(_DEFAULT_REMAP_FUNCS)
    if remap_funcs:
        funcs.update(remap_funcs)
    if blob_remap is None:
        blob_remap = {}
    get = blob_remap.get
    proto = net._net

    def remapped(blob):
        s = str(blob)
        return str(get(s, s))

    # blob name -> new name (str), seeded with the str entries of
    # blob_remap (clone_and_bind_net maps every blob); a plain dict (the
    # interpreter's fast path), other names are added on a miss
    names = {}
    for k, v in blob_remap.items():
        if type(k) is str:
            names[k] = v if type(v) is str else str(v)

    # miss_input(b): the new name of an input not in `names` yet (or
    # mapped to ""), stored there
    if bind_prefix is None:
        def miss_input(b):
            if b not in names:
                names[b] = remapped(b)
            return names[b]
    else:
        ext = proto.external_input
        versioned_input = set(ext).__contains__ if ext else (lambda b: True)

        def miss_input(b):
            # first seen as an input: read before written -> kept
            if b not in names:
                if b in blob_remap:
                    names[b] = remapped(b)
                else:
                    names[b] = b if type(b) is str else str(b)
                    if versioned_input(b):
                        blob_remap[b] = b
            return names[b]


    new_proto = _proto.NetDef()
    for field, value in proto._set.items():
        setattr(new_proto, field, _copy.deepcopy(value))
    new_proto.name = name
    new_proto.partition_info = list(proto.partition_info)
    new_proto.arg = [_copy.deepcopy(a) for a in proto.arg]
    ops = proto.op if op_id_mask is None else [proto.op[i] for i in op_id_mask]
    new_ops = new_proto.op
    prefix = (name + "/") if name else ""
    fget = funcs.get
    lookup = names.get
    append = new_ops.append
    remapped_in_place = False
    # The loop body is _proto.copy_op_with_io, inlined (40k ops in a
    # 20-node job): copy the field dict, replace input/output.  The
    # new ops' output sets are collected after the loop (in C).
    new_op = object.__new__
    op_cls = _proto.OperatorDef
    copy_extras = _proto._copy_op_extras
    for op in ops:
        # fill the new op's own __dict__ (faster than installing a copy)
        op2 = new_op(op_cls)
        d = op2.__dict__
        d.update(op.__dict__)
        # map() runs dict.get in C; a None marks an input not seen yet
        ins = [*map(lookup, op.input)]
        d["input"] = ins if None not in ins else [
            lookup(b) or miss_input(b) for b in op.input]
        # outputs are usually new names: the miss is inlined
        d["output"] = out = []
        for b in op.output:
            v = lookup(b)
            if v is None:
                if bind_prefix is None or b in blob_remap:
                    v = remapped(b)
                else:   # first seen as an output -> prefixed
                    v = blob_remap[b] = bind_prefix + b
                    if type(v) is not str:
                        v = str(v)
                names[b] = v
            out.append(v)
        if "arg" in d or "control_input" in d or "device_option" in d:
            copy_extras(d)
        fn = fget(d.get("type", ""))
        if fn is not None:
            if bind_prefix is not None:
                raise _NeedsSsaPass()
            fn(op2, prefix, blob_remap)
            remapped_in_place = True
        append(op2)
    if bind_prefix is not None:
        # external inputs no op reads first: written, or unused -> prefixed
        for b in proto.external_input:
            b = str(b)
            if b not in blob_remap:
                blob_remap[b] = b if names.get(b) == b else bind_prefix + b
    new_proto.external_input = [remapped(b) for b in proto.external_input]
    new_proto.external_output = [remapped(b) for b in proto.external_output]
    if remapped_in_place:   # a remap function may have edited the op
        new_net = from_owned_proto(new_proto)
    else:                   # every op input/output name is in `names`
        outs = set(_chain_from_iterable(map(_get_output, new_ops)))
        new_net = from_owned_proto(new_proto, outs, names.values())

    if keep_schema and (net._input_record or net._output_record):
        from_blob_list = _registry.schema_function("from_blob_list")
        if net._input_record:
            new_net._input_record = from_blob_list(
                net._input_record,
                [BlobReference(remapped(b), net=new_net)
                 for b in net._input_record.field_blobs()])
        if net._output_record:
            new_net._output_record = from_blob_list(
                net._output_record,
                [BlobReference(remapped(b), net=new_net)
                 for b in net._output_record.field_blobs()])
    new_net._attr_dict.update(net._attr_dict)

    if update_external_list:
        existing = []
        existing_set = set()
        used = set()
        ext_in = []
        ext_in_set = set()
        for op in new_net._net.op:
            for b in op.input:
                if b not in existing_set:
                    if b not in ext_in_set:
                        ext_in.append(b)
                        ext_in_set.add(b)
                else:
                    used.add(b)
            for b in op.output:
                if b not in existing_set:
                    existing.append(b)
                    existing_set.add(b)
        new_net._net.external_input = ext_in
        new_net._net.external_output = [b for b in existing if b not in used]
        new_net._RecreateLookupTables()
    return new_net
