"""The graph layer imports as a DAG behind an unchanged ``fastpipe.core``.

* every public module imports on its own, in a fresh interpreter;
* no module uses ``importlib`` or swallows ``ImportError`` (the old way the
  core <-> net_builder circle was held together);
* the private graph modules (``fastpipe._graph``) import nothing above
  them, at module level or inside functions;
* ``fastpipe.core`` keeps every name it had before the split.
"""
import ast
import os
import subprocess
import sys
import types

import pytest

import fastpipe
from fastpipe import core

PKG_DIR = os.path.dirname(fastpipe.__file__)
REPO_DIR = os.path.dirname(PKG_DIR)


def _py_files():
    for root, _, files in os.walk(PKG_DIR):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(root, f)


def _public_modules():
    return sorted(f[:-3] for f in os.listdir(PKG_DIR)
                  if f.endswith(".py") and not f.startswith("_"))


# The public names fastpipe.core had before it was split into
# fastpipe._graph (modules it happened to import -- np, sys, threading,
# contextlib, importlib -- are not API and are not listed).
CORE_PUBLIC_NAMES_BEFORE_SPLIT = {
    "BlobReference", "CreateOperator", "CreatePythonOperator",
    "CurrentDeviceScope", "CurrentNameScope", "DataType", "DeviceOption",
    "DeviceScope", "ExecutionStep", "GraphError", "IsOperator",
    "MakeArgument", "NameScope", "Net", "OrderedDict", "Plan",
    "ScopedBlobReference", "ScopedName", "add_nets_in_order",
    "clone_and_bind_net", "control_op_remap", "defaultdict",
    "execution_step", "get_net_name", "get_output_producers", "get_ssa",
    "get_undefined_blobs", "output_to_list", "scoped_execution_step",
    "to_execution_step",
}
CORE_ALL_BEFORE_SPLIT = [
    "DataType", "IsOperator", "BlobReference", "ScopedName",
    "ScopedBlobReference", "NameScope", "CurrentNameScope", "DeviceScope",
    "CurrentDeviceScope", "DeviceOption", "CreateOperator",
    "CreatePythonOperator", "MakeArgument", "Net", "ExecutionStep", "Plan",
    "execution_step", "scoped_execution_step", "to_execution_step",
    "clone_and_bind_net", "get_ssa", "get_undefined_blobs",
    "get_output_producers", "get_net_name", "output_to_list",
    "add_nets_in_order",
]
# Private helpers core had; kept importable from core for code that reached
# into it (the importlib-based _net_builder_class is gone on purpose).
CORE_PRIVATE_NAMES_KEPT = {
    "_DEFAULT_REMAP_FUNCS", "_NAMESCOPE_SEPARATOR", "_NeedsSsaPass",
    "_SPECIAL_OP_KWARGS", "_add_net_to_dict", "_blob_name",
    "_blob_versions_and_undefined", "_builder_prefix", "_chain_from_iterable",
    "_get_output", "_object_setattr", "_ops_in_path", "_py_scalar",
    "_rectify", "_register_python", "_remap_netdef", "_scope_local",
    "_unique_name",
}


def test_core_public_names_unchanged():
    public = {n for n, v in vars(core).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public == CORE_PUBLIC_NAMES_BEFORE_SPLIT
    assert core.__all__ == CORE_ALL_BEFORE_SPLIT


def test_core_private_helpers_still_reachable():
    missing = {n for n in CORE_PRIVATE_NAMES_KEPT if not hasattr(core, n)}
    assert not missing


@pytest.mark.timeout(120)
def test_each_public_module_imports_alone():
    mods = _public_modules() + ["core"]
    procs = {}
    for m in sorted(set(mods)):
        procs[m] = subprocess.Popen(
            [sys.executable, "-c", "import fastpipe.%s" % m], cwd=REPO_DIR,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    failed = {}
    for m, p in procs.items():
        out, err = p.communicate(timeout=100)
        if p.returncode != 0:
            failed[m] = err.decode("utf-8", "replace")[-600:]
    assert not failed, failed


@pytest.mark.timeout(60)
def test_core_imports_no_higher_module():
    code = ("import sys, fastpipe.core\n"
            "bad = [m for m in ('fastpipe.net_builder', 'fastpipe.schema', "
            "'fastpipe.task', 'fastpipe.workspace', 'fastpipe.session', "
            "'fastpipe._core') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, check=True,
                   timeout=50)


def _swallows_import_error(handler):
    # a handler that ends by raising (fastpipe.distributed: "pip install
    # fastpipe[ray]") does not swallow the error
    if handler.body and isinstance(handler.body[-1], ast.Raise):
        return False
    t = handler.type
    names = []
    for node in ([t] if t is not None else []):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                names.append(sub.id)
            elif isinstance(sub, ast.Attribute):
                names.append(sub.attr)
    return bool({"ImportError", "ModuleNotFoundError"} & set(names))


def test_no_importlib_and_no_swallowed_import_error():
    bad = []
    for path in _py_files():
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                if any(a.name.split(".")[0] == "importlib" for a in node.names):
                    bad.append("%s:%d imports importlib" % (path, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if (node.module or "").split(".")[0] == "importlib":
                    bad.append("%s:%d imports importlib" % (path, node.lineno))
            elif isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id == "__import__":
                    bad.append("%s:%d calls __import__" % (path, node.lineno))
            elif isinstance(node, ast.ExceptHandler):
                if _swallows_import_error(node):
                    bad.append("%s:%d catches ImportError" % (path, node.lineno))
    assert not bad, bad


# What the private graph modules may import from fastpipe (everything else
# they use comes from the standard library and numpy).
_GRAPH_ALLOWED = {"_graph", "proto", "_opschema", "_pyop", "errors"}


def _fastpipe_imports(tree):
    """(lineno, fastpipe module, is_top_level) of every fastpipe import in
    a module inside fastpipe/_graph/."""
    top = set(id(n) for n in tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                target = ["_graph"]
            elif node.level == 2:
                target = [node.module.split(".")[0]] if node.module else \
                    [a.name for a in node.names]
            elif node.level == 0 and (node.module or "").startswith("fastpipe"):
                parts = node.module.split(".")
                target = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            else:
                continue
            for t in target:
                yield node.lineno, t, id(node) in top
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("fastpipe"):
                    parts = a.name.split(".")
                    yield node.lineno, parts[1] if len(parts) > 1 else "", id(node) in top


def test_graph_modules_import_only_lower_modules():
    graph_dir = os.path.join(PKG_DIR, "_graph")
    files = sorted(f for f in os.listdir(graph_dir) if f.endswith(".py"))
    assert "net.py" in files and "step.py" in files
    bad = []
    for f in files:
        path = os.path.join(graph_dir, f)
        tree = ast.parse(open(path).read(), path)
        for lineno, target, top_level in _fastpipe_imports(tree):
            if target not in _GRAPH_ALLOWED:
                bad.append("%s:%d imports fastpipe.%s" % (f, lineno, target))
            elif not top_level:
                bad.append("%s:%d imports fastpipe.%s inside a function"
                           % (f, lineno, target))
    assert not bad, bad


def test_graph_finds_builder_and_schema_through_registry():
    # The hooks the higher modules register are the real ones.
    from fastpipe import net_builder, schema
    from fastpipe._graph import registry
    assert registry.builder_class() is net_builder.NetBuilder
    assert registry.schema_function("from_blob_list") is schema.from_blob_list
    with net_builder.NetBuilder(_fullname="imports_nb"):
        assert core.Net("x").Name().startswith("imports_nb/x")


def _function_local_fastpipe_imports(path):
    """(function name, module) for every import of a fastpipe module made
    inside a function of ``path``."""
    tree = ast.parse(open(path).read())
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (
                    node.module or "").startswith("fastpipe")):
                found.append((fn.name, node.module))
            elif isinstance(node, ast.Import) and any(
                    a.name.startswith("fastpipe") for a in node.names):
                found.append((fn.name, node.names[0].name))
    return found


def test_task_and_net_builder_are_not_a_circle():
    """net_builder sits below task: it does not import task (it finds the
    active TaskGroup through the graph registry), and task imports
    net_builder at module level, not inside a function."""
    code = ("import sys, fastpipe.net_builder\n"
            "assert 'fastpipe.task' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, check=True, timeout=50)
    for mod in ("task", "net_builder", "core"):
        assert _function_local_fastpipe_imports(os.path.join(PKG_DIR, mod + ".py")) == []
