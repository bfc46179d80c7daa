"""``python -m fastpipe demo`` runs the main job (see fastpipe/demo.py);
``python -m fastpipe dot MODULE:FUNCTION [-o out.svg]`` draws the job that
``FUNCTION()`` builds (see ``fastpipe.net_printer.to_dot``)."""
import sys

USAGE = ("usage: python -m fastpipe demo [--records N] [--batch B] [--instances K] [--epochs E]\n"
         "       python -m fastpipe dot MODULE:FUNCTION [-o out.svg|out.png|out.dot]")


def _load_function(spec):
    """``MODULE:FUNCTION`` -> the function; MODULE is a module name
    (importable from the current directory) or a path to a ``.py`` file.
    (runpy, not importlib: fastpipe's modules never import importlib.)"""
    import os
    import runpy

    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise SystemExit("fastpipe dot: expected MODULE:FUNCTION, got %r" % spec)
    if module_name.endswith(".py") or os.sep in module_name:
        if not os.path.isfile(module_name):
            raise SystemExit("fastpipe dot: no file %r" % module_name)
        namespace = runpy.run_path(module_name)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        namespace = runpy.run_module(module_name)
    func = namespace.get(func_name)
    if not callable(func):
        raise SystemExit("fastpipe dot: module %r has no function %r"
                         % (module_name, func_name))
    return func


def _dot(argv):
    import argparse

    from fastpipe import net_printer

    p = argparse.ArgumentParser(
        prog="python -m fastpipe dot",
        description="Draw the job, task group, task or plan that MODULE:FUNCTION() "
                    "returns (or the first item of the tuple it returns): print "
                    "Graphviz DOT, or render it to -o (.svg/.png/.pdf need the "
                    "Graphviz 'dot' program; .dot/.gv write the text).")
    p.add_argument("target", metavar="MODULE:FUNCTION")
    p.add_argument("-o", "--output", help="write the picture here instead of printing DOT")
    args = p.parse_args(argv)
    obj = _load_function(args.target)()
    if isinstance(obj, tuple):
        if not obj:
            raise SystemExit("fastpipe dot: %s() returned an empty tuple" % args.target)
        obj = obj[0]
    if args.output:
        net_printer.render(obj, args.output)
    else:
        sys.stdout.write(net_printer.to_dot(obj))
    return 0


def _main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "demo":
        from fastpipe import demo
        return demo.main(argv[1:])
    if argv[0] == "dot":
        from fastpipe.errors import FastpipeError
        try:
            return _dot(argv[1:])
        except FastpipeError as e:
            print("fastpipe dot: %s: %s" % (type(e).__name__, e), file=sys.stderr)
            return 1
    print("unknown command %r (try: demo, dot)" % argv[0])
    return 2


sys.exit(_main(sys.argv[1:]))
