#!/usr/bin/env bash
# Build fastpipe's native core with sanitizers in a throw-away copy of the tree
# and run the core tests under them.  The checkout itself is never touched
# (no build/, no .so, no git state).
#
#   tools/sanitize.sh                 # ASan (+ LSan pass) on the core tests
#   tools/sanitize.sh --tsan          # ... then TSan on the core tests
#   tools/sanitize.sh --all           # ASan + LSan + TSan, core + pipeline tests + MPMC stress
#   tools/sanitize.sh --tsan-only --pipeline
#
# Options:
#   --asan-only / --tsan / --tsan-only / --all
#   --no-leaks        skip the LSan (detect_leaks=1) pass
#   --pipeline        also run tests/test_pipeline.py, test_queue_util.py, test_session.py
#   --stress N        also run the MPMC queue plan (tests/test_queue_ops.py::_mpmc_plan) N times
#   -k EXPR           passed to pytest
#   --keep            keep the build trees (the logs in <dir>/_logs are always kept)
# Environment: PYTHON (default: the real interpreter behind python3 -- not a
# pyenv shim, which is a bash script and breaks LD_PRELOAD/LSan), SANITIZE_DIR
# (work dir, kept; default a mktemp dir), NICE (default 10), TIMEOUT (seconds
# per test run, default 1800).  Takes ~1 min (default) to ~4 min (--all) on 2 cores.
#
# Notes
# - The sanitized extension runs inside an unsanitized CPython, so the runtime
#   is LD_PRELOADed (it must be the first library loaded).
# - pytest captures fd 2 and drops it for passing tests, so sanitizer reports
#   are written with log_path=<dir>/<kind>.<pid> and summarised at the end.
# - The LSan pass reports only leaks allocated by _core (see lsan_filter.py
#   below); the stats registry counters (stat_slot) are suppressed: they are
#   only "leaked" after the module's static unordered_map is destroyed at exit.
# - Exit status: 0 if every test passed and no sanitizer reported anything.
set -u -o pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
do_asan=1 do_leaks=1 do_tsan=0 do_pipeline=0 stress=0 keep=0 kexpr=""
while [ $# -gt 0 ]; do
    case "$1" in
        --asan-only) do_tsan=0 ;;
        --tsan) do_tsan=1 ;;
        --tsan-only) do_tsan=1; do_asan=0; do_leaks=0 ;;
        --all) do_tsan=1; do_pipeline=1; [ "$stress" -gt 0 ] || stress=200 ;;
        --no-leaks) do_leaks=0 ;;
        --pipeline) do_pipeline=1 ;;
        --stress) stress="$2"; shift ;;
        --keep) keep=1 ;;
        -k) kexpr="$2"; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "sanitize.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

PY="${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}"
NICE="nice -n ${NICE:-10}"
work="${SANITIZE_DIR:-$(mktemp -d /tmp/fastpipe-sanitize.XXXXXX)}"
mkdir -p "$work"
logs="$work/_logs"
mkdir -p "$logs"
status=0

core_tests="tests/test_ops.py tests/test_workspace.py tests/test_executor.py tests/test_queue_ops.py tests/test_dataset_ops.py"
pipe_tests="tests/test_pipeline.py tests/test_queue_util.py tests/test_session.py"

log() { printf '\n=== %s\n' "$*"; }

copy_tree() {   # copy_tree DEST
    rm -rf "$1"; mkdir -p "$1"
    (cd "$here" && tar --exclude=./.git --exclude=./build --exclude='*.so' \
        --exclude='fastpipe/_core.cpp' --exclude='fastpipe/_core.html' \
        --exclude='__pycache__' --exclude='.pytest_cache' -cf - .) | tar -C "$1" -xf -
}

build() {   # build DIR KIND
    log "build ($2) in $1"
    if ! (cd "$1" && FASTPIPE_SANITIZE="$2" $NICE "$PY" setup.py build_ext --inplace \
            > "$logs/build-$2.log" 2>&1); then
        tail -30 "$logs/build-$2.log"; echo "BUILD FAILED ($2): $logs/build-$2.log"; return 1
    fi
    echo "built: $(ls "$1"/fastpipe/_core*.so)"
}

write_stress() {   # the MPMC stress driver, into DIR
    cat > "$1/_sanitize_stress.py" <<'EOF'
import itertools, os, sys, time
root = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, root); sys.path.insert(0, os.path.join(root, "tests"))
import numpy as np
from fastpipe import workspace
from test_queue_ops import _mpmc_plan
reps, n = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200
combos = list(itertools.product([1, 2, 64], [1, 2, 3], [1, 2, 3], [1, 5]))
bad, t0 = 0, time.time()
for i in range(reps):
    cap, P, C, nr = combos[i % len(combos)]
    workspace.SwitchWorkspace("default"); workspace.ResetWorkspace()
    workspace.RunPlan(_mpmc_plan(n, P, C, cap, nr))
    ids = np.concatenate([workspace.FetchBlob("seen_%d" % c) for c in range(C)])
    sqs = np.concatenate([workspace.FetchBlob("seensq_%d" % c) for c in range(C)])
    if sorted(ids.tolist()) != list(range(n * P)) or \
            not np.array_equal(sqs.reshape(-1), ids.astype(np.float64) ** 2):
        bad += 1
        print("MISMATCH rep=%d capacity=%d producers=%d consumers=%d num_records=%d got=%d"
              % (i, cap, P, C, nr, len(ids)), flush=True)
print("stress: %d runs, %d bad, %.1fs" % (reps, bad, time.time() - t0), flush=True)
sys.exit(1 if bad else 0)
EOF
}

# run_py DIR NAME ENV... -- ARGS...: run python under a preloaded sanitizer
run_py() {
    local dir="$1" name="$2"; shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    (cd "$dir" && env "${envs[@]}" $NICE timeout "${TIMEOUT:-1800}" "$PY" "$@") \
        > "$logs/out-$name.txt" 2>&1
    local rc=$?
    tail -3 "$logs/out-$name.txt" | sed 's/^/    /'
    return $rc
}

# reports PREFIX: print and count sanitizer reports written via log_path
reports() {
    local files n
    files=$(ls "$1".* 2>/dev/null)
    [ -z "$files" ] && { echo "    no sanitizer reports"; return 0; }
    n=$(cat $files | grep -c -E '^(==[0-9]+==ERROR|WARNING: ThreadSanitizer|Direct leak|Indirect leak)')
    echo "    $n sanitizer report(s) in: $files"
    cat $files | grep -E '^SUMMARY|^(Direct|Indirect) leak' | sort | uniq -c | sed 's/^/    /'
    [ "$n" -eq 0 ]
}

pytest_args=(-q -p no:cacheprovider)
[ -n "$kexpr" ] && pytest_args+=(-k "$kexpr")

run_suite() {   # run_suite DIR KIND (address|thread) TAG TESTS...
    local dir="$1" kind="$2" tag="$3"; shift 3
    local lib opts rc
    if [ "$kind" = thread ]; then lib="$(gcc -print-file-name=libtsan.so)"
    else lib="$(gcc -print-file-name=libasan.so)"; fi
    case "$tag" in
        leaks*) opts=(ASAN_OPTIONS="detect_leaks=1:log_path=$logs/$tag"
                      LSAN_OPTIONS="suppressions=$logs/lsan.supp:print_suppressions=0") ;;
        asan*)  opts=(ASAN_OPTIONS="detect_leaks=0:log_path=$logs/$tag") ;;
        tsan*)  opts=(TSAN_OPTIONS="report_signal_unsafe=0 second_deadlock_stack=1 halt_on_error=0 log_path=$logs/$tag") ;;
    esac
    log "$tag: $*"
    if [ "$1" = stress ]; then
        run_py "$dir" "$tag" LD_PRELOAD="$lib" "${opts[@]}" -- _sanitize_stress.py "$2"
    else
        run_py "$dir" "$tag" LD_PRELOAD="$lib" "${opts[@]}" -- -m pytest "${pytest_args[@]}" "$@"
    fi
    rc=$?
    # TSan cannot map its shadow with some ASLR layouts: retry without ASLR
    if [ "$kind" = thread ] && grep -q "unexpected memory mapping\|FATAL: ThreadSanitizer" "$logs/out-$tag.txt" "$logs/$tag".* 2>/dev/null; then
        echo "    TSan failed to start; retrying under setarch -R"
        rm -f "$logs/$tag".*
        (cd "$dir" && env LD_PRELOAD="$lib" "${opts[@]}" $NICE setarch "$(uname -m)" -R \
            "$PY" -m pytest "${pytest_args[@]}" "$@") > "$logs/out-$tag.txt" 2>&1
        rc=$?; tail -3 "$logs/out-$tag.txt" | sed 's/^/    /'
    fi
    case "$tag" in
        leaks*)
            # LSan exits non-zero for CPython's own exit-time "leaks"; judge by the filter
            "$PY" "$logs/lsan_filter.py" "$logs/$tag".* > "$logs/leaks-summary-$tag.txt" 2>&1
            local lrc=$?
            sed 's/^/    /' "$logs/leaks-summary-$tag.txt" | head -60
            grep -q "passed" "$logs/out-$tag.txt" && ! grep -qE "[0-9]+ (failed|error)" "$logs/out-$tag.txt" \
                || { echo "    TESTS FAILED: $logs/out-$tag.txt"; status=1; }
            [ $lrc -eq 0 ] || status=1
            return ;;
    esac
    [ $rc -eq 0 ] || { echo "    FAILED (exit $rc): $logs/out-$tag.txt"; status=1; }
    reports "$logs/$tag" || status=1
}

# LSan: CPython/numpy are not built for it and leak at exit by design.  An
# LSan suppression matches ANY frame of the allocation stack, so suppressing
# libpython would also hide _core leaks made on a Python thread; instead the
# only suppression is the stats registry, and lsan_filter.py keeps the leaks
# whose allocating frame (first frame after the allocator) is in _core.
cat > "$logs/lsan.supp" <<'EOF'
# process-global stats registry: counters are never freed by design; they
# look leaked only after the static g_stats map is destroyed at exit
leak:stat_slot
EOF
cat > "$logs/lsan_filter.py" <<'EOF'
"""Summarise LSan logs: leaks allocated by fastpipe's _core (first frame
after the allocator is in _core) vs Python objects allocated on a path
through _core vs everything else (CPython/numpy exit-time noise)."""
import re, sys
ALLOC = re.compile(r"in (__interceptor_|__interceptor_)?(malloc|calloc|realloc|operator new|operator new\[\]|posix_memalign|aligned_alloc|strdup)\b|"
                   r"in (_?PyMem_\w*|_?PyObject_\w*Malloc\w*|_?PyObject_\w*Calloc\w*|_?PyObject_\w*Realloc\w*|pymalloc_\w*|_PyObject_GC_\w*|PyObject_GC_\w*|_PyObject_New\w*|PyType_GenericAlloc|_PyType_AllocNoTrack)\b|"
                   r"asan_malloc|tsan_new_delete|asan_new_delete")
def is_core(l): return "_core.cpython" in l or "fastpipe/_core" in l or "__pyx_" in l
recs, cur = [], None
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        if re.match(r"^(Direct|Indirect) leak of", line):
            cur = [line.rstrip()]; recs.append(cur)
        elif cur is not None and re.match(r"^\s+#\d+ ", line):
            cur.append(line.rstrip())
        elif cur is not None and not line.strip():
            cur = None
native, pyobj, other = [], [], 0
for r in recs:
    frames = r[1:]
    first = next((f for f in frames if not ALLOC.search(f)), "")
    if is_core(first):
        native.append(r)
    elif any(is_core(f) for f in frames):
        pyobj.append(r)
    else:
        other += 1
def show(rs, title):
    print("%s: %d" % (title, len(rs)))
    for r in rs[:40]:
        print("  " + r[0])
        for f in r[1:12]:
            print("    " + re.sub(r" \(/[^)]*\)$", "", f.strip()))
show(native, "leaks allocated by _core (native)")
show(pyobj, "Python objects allocated on a path through _core")
print("other (CPython / numpy / interpreter exit) leak records: %d" % other)
sys.exit(1 if native else 0)
EOF

echo "fastpipe sanitize: source $here -> $work (python: $PY)"
if [ "$do_asan" = 1 ]; then
    copy_tree "$work/asan"; write_stress "$work/asan"
    if build "$work/asan" address; then
        run_suite "$work/asan" address asan-core $core_tests
        [ "$do_pipeline" = 1 ] && run_suite "$work/asan" address asan-pipeline $pipe_tests
        [ "$stress" -gt 0 ] && run_suite "$work/asan" address asan-stress stress "$stress"
        if [ "$do_leaks" = 1 ]; then
            run_suite "$work/asan" address leaks-core $core_tests
            [ "$do_pipeline" = 1 ] && run_suite "$work/asan" address leaks-pipeline $pipe_tests
        fi
    else
        status=1
    fi
fi
if [ "$do_tsan" = 1 ]; then
    copy_tree "$work/tsan"; write_stress "$work/tsan"
    if build "$work/tsan" thread; then
        run_suite "$work/tsan" thread tsan-core $core_tests
        [ "$do_pipeline" = 1 ] && run_suite "$work/tsan" thread tsan-pipeline $pipe_tests
        [ "$stress" -gt 0 ] && run_suite "$work/tsan" thread tsan-stress stress "$(( stress < 50 ? stress : 50 ))"
    else
        status=1
    fi
fi

log "result: $([ $status -eq 0 ] && echo CLEAN || echo 'FINDINGS / FAILURES') -- logs in $logs"
if [ "$keep" = 0 ] && [ -z "${SANITIZE_DIR:-}" ]; then
    # keep the logs, drop the build trees
    rm -rf "$work/asan" "$work/tsan"
    echo "(build trees removed; pass --keep to keep them)"
fi
exit $status
