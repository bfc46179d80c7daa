"""See inside a running job: live stats, a bottleneck verdict, a stall
report, a progress line and a per-op profile.

``LocalSession.start()`` returns a :class:`~fastpipe.session.RunHandle`
and ``LocalSession.iterate()`` a RecordIterator; both have ``stats()`` and
``diagnose()``, which this module computes from the run's native counters:

* per stage (a pipe or task; named as in ``net_printer.to_dot``: the
  task's name, which ``pipe()`` takes from the processor's ``__qualname__``,
  the reader or the output) -- records (rows) and batches (queue records)
  in and out, their rate overall and over the last interval, and the time
  its instances were busy vs blocked on their input vs on their output;
* per queue -- capacity, current depth, time full, time empty, records
  through.

The counters are native: each queue op counts into its own unshared
struct and adds it into per-stage atomics every 256 records, before it
parks, when it goes away, and at its next record after a poller asked
(``stats()`` bumps a counter the ops read relaxed).  Time is measured only
around waits.  Reading never stops a worker and takes no lock a worker
takes per record; the counts a poll sees are at most one poll (or 256
records) old, and exact once the run has finished.

Threading: every function here may be called from any thread while the
job runs.
"""

import logging
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional

__all__ = ["Observer", "Verdict", "StallReport", "progress", "Progress"]

log = logging.getLogger("fastpipe")

_NS = 1e-9


def short_name(name: str, parent: Optional[str]) -> str:
    """A task's name without its node's prefix (``local/decode`` ->
    ``decode``), as ``net_printer.to_dot`` labels it."""
    if parent and name.startswith(parent + "/"):
        return name[len(parent) + 1:]
    return name


def _pct(x: float) -> str:
    return "%d%%" % round(100.0 * x)


def _rate(n: float) -> str:
    if n >= 1e6:
        return "%.2fM" % (n / 1e6)
    if n >= 1e4:
        return "%.1fk" % (n / 1e3)
    return "%.0f" % n


class Observer(object):
    """Turns one run's native counters into stats (plain, JSON-ready dicts).

    One per run (the RunHandle makes it).  ``iterated`` is the queue a
    RecordIterator reads, whose reader is the Python loop."""

    def __init__(self, native_run, iterated: Optional[str] = None) -> None:
        self._run = native_run
        self._iterated = iterated
        self._lock = threading.Lock()     # protects _prev (pollers on several threads)
        self._prev = None                 # (t_ns, {stage: rows_out}) of the last stats()
        info = native_run.observe_info
        stages = info["stages"]
        self._stage_names = []
        for st in stages:
            parent = stages[st["parent"]]["name"] if st["parent"] >= 0 else None
            self._stage_names.append(short_name(st["name"], parent))
        self._info = info

    # -- stats

    def raw(self) -> Dict[str, Any]:
        return self._run.observe()

    def stats(self, raw: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The run's stats now: ``{"elapsed_s", "done", "stages": [...],
        "queues": [...], "profile": [...] | None, "stalled_for_s"}``.

        ``rate_*`` are records (rows) per second over the whole run;
        ``interval_rate_*`` over the time since the previous ``stats()`` of
        this run (None at the first).  ``busy``/``blocked_in``/``blocked_out``
        are fractions of the stage's instance-seconds (its ops' lifetimes),
        ``*_s`` seconds; a queue's ``full``/``empty`` is the fraction of the
        run its writers / readers (on average) waited on it."""
        raw = raw if raw is not None else self.raw()
        stages_info = self._info["stages"]
        now = raw["now_ns"]
        end = raw["end_ns"] or now
        elapsed = max(end - raw["start_ns"], 1) * _NS
        probes = raw["probes"]
        stages = []
        writers_of = {}
        readers_of = {}
        for i, (st, c) in enumerate(zip(stages_info, raw["stages"])):
            if not st["reads"] and not st["writes"]:
                continue        # a node's setup, or a task with no queue
            b_in, r_in, w_in, b_out, r_out, w_out, live_in, live_out = c
            mine = [p for p in probes if p["stage"] == i]
            # waits still going on are not in the counters yet
            for p in mine:
                if p["waiting"] and p["since_ns"]:
                    if p["kind"] == "read":
                        w_in += max(end - p["since_ns"], 0)
                    else:
                        w_out += max(end - p["since_ns"], 0)
            # instance-seconds: finished ops' lifetimes plus the live ones'
            kind = "write" if st["writes"] else "read"
            live = live_out if st["writes"] else live_in
            live += sum(max(end - p["bound_ns"], 0) for p in mine if p["kind"] == kind)
            inst_s = max(live * _NS, 1e-9)
            blocked_in = w_in * _NS
            blocked_out = w_out * _NS
            busy = max(inst_s - blocked_in - blocked_out, 0.0)
            name = self._stage_names[i]
            for q in st["writes"]:
                writers_of.setdefault(q, []).append((name, st["instances"]))
            for q in st["reads"]:
                readers_of.setdefault(q, []).append((name, st["instances"]))
            rows_in = r_in if st["reads"] else None
            stages.append({
                "name": name,
                "task": st["name"],
                "instances": st["instances"],
                "inputs": list(st["reads"]),
                "outputs": list(st["writes"]),
                "op_types": list(st.get("op_types", ())),
                "records_in": rows_in,
                "batches_in": b_in if st["reads"] else None,
                "records_out": r_out,
                "batches_out": b_out,
                "rate_out": r_out / elapsed,
                "rate_in": (r_in / elapsed) if st["reads"] else None,
                "interval_rate_out": None,
                "interval_rate_in": None,
                "busy_s": busy,
                "blocked_in_s": blocked_in,
                "blocked_out_s": blocked_out,
                "instance_s": inst_s,
                "busy": min(busy / inst_s, 1.0),
                "blocked_in": min(blocked_in / inst_s, 1.0),
                "blocked_out": min(blocked_out / inst_s, 1.0),
                "alive": sum(1 for p in mine if p["kind"] == kind),
            })
        with self._lock:
            prev = self._prev
            cur = {s["name"]: (s["records_out"], s["records_in"]) for s in stages}
            if prev is not None and now > prev[0]:
                dt = (now - prev[0]) * _NS
                for s in stages:
                    if s["name"] in prev[1]:
                        out0, in0 = prev[1][s["name"]]
                        s["interval_rate_out"] = (s["records_out"] - out0) / dt
                        if in0 is not None:
                            s["interval_rate_in"] = (s["records_in"] - in0) / dt
            self._prev = (now, cur)
        queues = []
        for q in raw["queues"]:
            name = q["name"]
            nw = sum(n for _, n in writers_of.get(name, ())) or 1
            nr = sum(n for _, n in readers_of.get(name, ()))
            if name == self._iterated:
                nr += 1
            nr = nr or 1
            full_ns = q["write_ns"]
            empty_ns = q["read_ns"]
            for p in probes:
                if p["waiting"] and p["queue"] == name and p["since_ns"]:
                    if p["kind"] == "write":
                        full_ns += max(end - p["since_ns"], 0)
                    else:
                        empty_ns += max(end - p["since_ns"], 0)
            time_full = full_ns * _NS / nw
            time_empty = empty_ns * _NS / nr
            queues.append({
                "name": name,
                "capacity": q["capacity"],
                "depth": q["depth"],
                "closed": q["closed"],
                "records": q["records"],
                "time_full_s": time_full,
                "time_empty_s": time_empty,
                "full": min(time_full / elapsed, 1.0),
                "empty": min(time_empty / elapsed, 1.0),
                "writers": [n for n, _ in writers_of.get(name, ())],
                "readers": ([n for n, _ in readers_of.get(name, ())]
                            + (["<iterate>"] if name == self._iterated else [])),
                "writers_alive": q["writers"],
                "readers_alive": q["readers"],
            })
        # in pipeline order: by the first stage that writes them
        order = {}
        for k, st in enumerate(stages):
            for q in st["outputs"]:
                order.setdefault(q, k)
        queues.sort(key=lambda q: (order.get(q["name"], len(stages)), q["name"]))
        profile = None
        if raw["profile"] is not None:
            profile = []
            for (net, op_type), (ns, n) in zip(self._info["profile_keys"], raw["profile"]):
                if n:
                    profile.append({"net": net, "op_type": op_type, "calls": n,
                                    "total_s": ns * _NS, "mean_us": ns / n / 1e3})
            profile.sort(key=lambda e: -e["total_s"])
        stalled = raw["stalled_since_ns"]
        return {
            "elapsed_s": elapsed,
            "done": bool(raw["end_ns"]),
            "stages": stages,
            "queues": queues,
            "profile": profile,
            "stalled_for_s": (now - stalled) * _NS if stalled else None,
        }

    # -- verdicts

    def diagnose(self) -> "Verdict":
        """A stall report when the watchdog saw the run stall, else the
        bottleneck verdict (see :class:`Verdict`)."""
        raw = self.raw()
        stats = self.stats(raw)
        if raw["stalled_since_ns"] and not stats["done"]:
            return self.stall_report(raw, stats)
        return bottleneck(stats)

    def stall_report(self, raw=None, stats=None) -> "StallReport":
        raw = raw if raw is not None else self.raw()
        stats = stats if stats is not None else self.stats(raw)
        now = raw["now_ns"]
        blocked = []
        for p in raw["probes"]:
            if not p["waiting"]:
                continue
            blocked.append({
                "stage": self._stage_names[p["stage"]] if p["stage"] >= 0 else None,
                "instance": p["instance"] if p["instance"] >= 0 else None,
                "op": p["op"],
                "waits_to": p["kind"],
                "queue": p["queue"],
                "depth": p["depth"],
                "capacity": p["capacity"],
                "waiting_s": (now - p["since_ns"]) * _NS,
            })
        running = []
        for p in raw["probes"]:
            if not p["waiting"] and p["stage"] >= 0:
                nm = self._stage_names[p["stage"]]
                if nm not in running and not any(b["stage"] == nm for b in blocked):
                    running.append(nm)
        queues = [{"name": q["name"], "depth": q["depth"], "capacity": q["capacity"],
                   "closed": q["closed"], "writers": q["writers"], "readers": q["readers"],
                   "writers_alive": q["writers_alive"], "readers_alive": q["readers_alive"]}
                  for q in stats["queues"]]
        return StallReport(stats["stalled_for_s"] or 0.0, blocked, queues, running)


def bottleneck(stats: Dict[str, Any]) -> "Verdict":
    """The stage that limits throughput, from ``stats`` (see Verdict)."""
    stages = stats["stages"]
    queues = {q["name"]: q for q in stats["queues"]}
    if not stages:
        return Verdict("unknown", None, "no stage of this job reads or writes a queue: "
                       "nothing to compare", {})
    # the limiting stage is the one that waits least (busy most): its
    # producers wait on its full input, its consumers on its empty output
    best = max(stages, key=lambda s: (s["busy"], -s["blocked_out"]))
    fin = [queues[q]["full"] for q in best["inputs"] if q in queues]
    fout = [queues[q]["empty"] for q in best["outputs"] if q in queues]
    evidence = {"busy": best["busy"], "blocked_in": best["blocked_in"],
                "blocked_out": best["blocked_out"],
                "input_full": max(fin) if fin else None,
                "output_empty": max(fout) if fout else None}
    # everyone mostly waits on output: the reader of the last queue (often
    # the Python loop) is slower than the whole pipeline
    if best["busy"] < 0.5 and all(s["blocked_out"] > s["blocked_in"] for s in stages):
        last = stages[-1]
        outs = [queues[q] for q in last["outputs"] if q in queues]
        full = max((q["full"] for q in outs), default=0.0)
        who = ", ".join(sorted({r for q in outs for r in q["readers"]})) or "nobody"
        msg = ("the consumer of %s (%s) is the bottleneck: every stage waits on its output "
               "most of the time (stage %r blocked on output %s), the queue is full %s of "
               "the time -- make the loop faster, or it is simply the pace you consume at"
               % (", ".join(repr(q["name"]) for q in outs) or "the last queue", who,
                  last["name"], _pct(last["blocked_out"]), _pct(full)))
        return Verdict("consumer", None, msg, dict(evidence, stage=last["name"]))
    parts = ["busy %s" % _pct(best["busy"])]
    if evidence["input_full"] is not None:
        parts.append("its input queue full %s of the time" % _pct(evidence["input_full"]))
    else:
        parts.append("it reads from a source (no input queue)")
    if evidence["output_empty"] is not None:
        parts.append("its output queue empty %s" % _pct(evidence["output_empty"]))
    remedy = "add instances (num_runtime_threads) or a bigger batch"
    if "PythonStage" in best["op_types"]:
        remedy += ("; a Python stage holds the GIL while its function runs, so more "
                   "instances help only as far as the function releases it (numpy, I/O)")
    inst = best["instances"]
    msg = "stage %r (%d instance%s) is the bottleneck: %s -- %s" % (
        best["name"], inst, "" if inst == 1 else "s", ", ".join(parts), remedy)
    return Verdict("bottleneck", best["name"], msg, evidence, instances=inst, remedy=remedy)


class Verdict(object):
    """What ``diagnose()`` returns: ``str()`` is one line naming the
    limiting stage with its evidence and a remedy.

    Attributes: ``kind`` ("bottleneck", "consumer", "stall", "unknown"),
    ``stage`` (its name or None), ``instances``, ``evidence`` (busy,
    blocked_in, blocked_out, input_full, output_empty as fractions),
    ``remedy``, ``message``."""

    def __init__(self, kind, stage, message, evidence, instances=None, remedy=None):
        self.kind = kind
        self.stage = stage
        self.message = message
        self.evidence = evidence
        self.instances = instances
        self.remedy = remedy

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "stage": self.stage, "instances": self.instances,
                "message": self.message, "evidence": dict(self.evidence),
                "remedy": self.remedy}

    def __str__(self):
        return self.message

    def __repr__(self):
        return "<Verdict %s: %s>" % (self.kind, self.message)


class StallReport(Verdict):
    """Who waits on what when nothing moved for ``stall_timeout`` seconds:
    ``blocked`` (every waiting op: stage, instance, op, whether it waits to
    read or write, queue with depth and capacity, for how long), ``queues``
    (depth, capacity, closed, and the writers and readers still alive) and
    ``running`` (stages with live ops that are not waiting on a queue, e.g.
    inside a Python function).  ``str()`` is a summary line followed by one
    line per blocked op and per queue."""

    def __init__(self, stalled_for_s, blocked, queues, running):
        self.stalled_for_s = stalled_for_s
        self.blocked = blocked
        self.queues = queues
        self.running = running
        if blocked:
            b = blocked[0]
            head = ("stalled: no record moved for %.1f s; %d op%s blocked, e.g. stage %r "
                    "waits to %s queue %r (%d/%d)" % (
                        stalled_for_s, len(blocked), "" if len(blocked) == 1 else "s",
                        b["stage"], b["waits_to"], b["queue"], b["depth"], b["capacity"]))
        else:
            head = "stalled: no record moved for %.1f s and no op waits on a queue" % (
                stalled_for_s,)
        if running:
            head += "; running (not waiting on a queue): %s" % ", ".join(running)
        Verdict.__init__(self, "stall", blocked[0]["stage"] if blocked else None, head,
                         {"stalled_for_s": stalled_for_s})

    def lines(self) -> List[str]:
        out = [self.message]
        for b in self.blocked:
            inst = "" if b["instance"] is None else " instance %d" % b["instance"]
            out.append("  stage %r%s blocked %.1f s in %s: waits to %s queue %r (depth %d of "
                       "capacity %d)" % (b["stage"], inst, b["waiting_s"], b["op"],
                                         b["waits_to"], b["queue"], b["depth"], b["capacity"]))
        for q in self.queues:
            out.append("  queue %r: %d/%d%s; writers %s (%d alive), readers %s (%d alive)" % (
                q["name"], q["depth"], q["capacity"], ", closed" if q["closed"] else "",
                ", ".join(q["writers"]) or "none known", q["writers_alive"],
                ", ".join(q["readers"]) or "none known", q["readers_alive"]))
        return out

    def to_dict(self) -> Dict[str, Any]:
        d = Verdict.to_dict(self)
        d.update(stalled_for_s=self.stalled_for_s, blocked=list(self.blocked),
                 queues=list(self.queues), running=list(self.running))
        return d

    def __str__(self):
        return "\n".join(self.lines())


def make_stall_handler(native_ref, iterated, on_stall):
    """The watchdog's callback (called on a native thread, GIL held): log
    the report; with on_stall="raise" also fail the run with StallError,
    which ``wait()`` and ``next()`` then raise."""
    def handler():
        ident = threading.get_ident()
        known = ident in threading._active      # (the watchdog is a native thread)
        native = report = None
        try:
            native = native_ref()
            if native is None:
                return
            report = Observer(native, iterated).stall_report()
            mine = [q for q in report.queues if q["name"] == iterated]
            if mine and not mine[0]["closed"] and mine[0]["depth"] >= mine[0]["capacity"]:
                # the queue the Python loop iterates is full: the loop has not
                # asked for a record (a long training step), the job is fine
                log.debug("fastpipe: nothing moved, but the loop over queue %r has not "
                          "called next() (the queue is full): not a stall", iterated)
                return
            log.warning("fastpipe: %s", report)
            if on_stall == "raise":
                from .errors import StallError
                native._fail_with(StallError(str(report), report))
        finally:
            report = None
            if native is not None and sys.getrefcount(native) <= 2:
                # The user dropped the run while this ran: this is its last
                # reference, and freeing the Run here would join the driver
                # thread, which is joining this one.  Hand it to a thread
                # that frees it once this one has let go.
                box, let_go = [native], threading.Event()
                threading.Thread(target=_release, args=(box, let_go), name="fastpipe-release",
                                 daemon=True).start()
                native = None
                let_go.set()
            native = None
            if not known:
                # logging called threading.current_thread(), which registers a
                # _DummyThread for this native thread that would never go away
                threading._active.pop(ident, None)
    return handler


def _release(box, let_go):
    """Drop the object in ``box`` on this thread, once ``let_go`` is set
    (see make_stall_handler)."""
    let_go.wait()
    box.clear()


# ---- progress ---------------------------------------------------------------------------

class Progress(object):
    """A one-line progress display of a run (records/s per stage, queue
    depths, elapsed), rewritten with ``\\r`` at most ``1/interval`` times a
    second on a background thread.  Silent unless ``stream`` is a terminal
    or ``force``.  ``stop()`` (or leaving the ``with`` block) writes the
    last line and joins the thread; the thread also ends by itself once the
    run has finished."""

    def __init__(self, handle, stream=None, force=False, interval=0.25, enabled=None):
        if interval < 0.25:
            interval = 0.25         # at most 4 refreshes a second
        self._handle = handle
        self._stream = stream if stream is not None else sys.stderr
        isatty = getattr(self._stream, "isatty", None)
        self.enabled = bool(force or (isatty is not None and isatty()))
        if enabled is not None:
            self.enabled = bool(enabled)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = None
        self._width = 0
        self.lines_written = 0

    def start(self) -> "Progress":
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fastpipe-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def line(self, stats=None) -> str:
        s = stats if stats is not None else self._handle.stats()
        parts = []
        for st in s["stages"]:
            r = st["interval_rate_out"]
            parts.append("%s %s/s" % (st["name"], _rate(r if r is not None else st["rate_out"])))
        qs = " ".join("%s %d/%d" % (_short_queue(q["name"]), q["depth"], q["capacity"])
                      for q in s["queues"])
        return "[%6.1fs] %s | queues %s" % (s["elapsed_s"], " | ".join(parts), qs)

    def _write(self, text, end=""):
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        try:
            self._stream.write("\r" + text + " " * pad + end)
            self._stream.flush()
        except (OSError, ValueError):
            self._stop.set()
        self.lines_written += 1

    def _loop(self):
        while not self._stop.wait(self._interval):
            try:
                s = self._handle.stats()
            except Exception:       # the run is being torn down
                break
            self._write(self.line(s))
            if s["done"]:
                break
        try:
            self._write(self.line(), end="\n")
        except Exception:
            pass

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()

    def __enter__(self) -> "Progress":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


def _short_queue(name: str) -> str:
    for suffix in ("/queue/handler", "/handler"):
        if name.endswith(suffix):
            name = name[:-len(suffix)]
    return name.rsplit("/", 1)[-1] if "/" in name else name


def progress(run, stream=None, force=False, interval=0.25, enabled=None) -> Progress:
    """A progress display for ``run`` (a RunHandle or a RecordIterator), as
    a context manager::

        with fastpipe.progress(s.start(tg)) as p:
            ...

    Writes to ``stream`` (default stderr) only when it is a terminal,
    unless ``force``; ``enabled`` (a bool) decides outright."""
    handle = getattr(run, "run", None) if not hasattr(run, "stats") else run
    if handle is None or not hasattr(handle, "stats"):
        from .errors import ArgumentError
        raise ArgumentError("progress: %r is not a RunHandle or a RecordIterator" % (run,))
    return Progress(handle, stream=stream, force=force, interval=interval, enabled=enabled)


def stdout_is_terminal() -> bool:
    try:
        return os.isatty(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        return False
