"""``python -m fastpipe demo`` runs the main job (see fastpipe/demo.py)."""
import sys


def _main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m fastpipe demo [--records N] [--batch B] [--instances K] [--epochs E]")
        return 0 if argv else 2
    if argv[0] == "demo":
        from fastpipe import demo
        return demo.main(argv[1:])
    print("unknown command %r (try: demo)" % argv[0])
    return 2


sys.exit(_main(sys.argv[1:]))
