#!/usr/bin/env python3
"""Fan-out against the same run without subscribers: interleaved pairs.

Runs `trove bench BENCH_ARGS --watch 0` (without) and `trove bench
BENCH_ARGS FANOUT_ARGS` (with) in turn, PAIRS times, each writing its
--json, and prints the medians of achieved rate, p99 to the ACK and the
knee (with --ramp) of each side and their ratio (with / without), plus the
fan-out figures of the runs with subscribers and the server's fan-out
cost per delivered update: per pair, (server CPU with - server CPU per
event without x events achieved with) / updates delivered, that is all of
the server's CPU less what its ingest took in the run without subscribers
(the JSON's `server_cpu_ns_per_update` is all of it, ingest included).
Pairs are interleaved so a change in the machine's load hits both sides
alike.

    scripts/fanout-pairs.py [--pairs 3] [--trove target/release/trove] \\
        -- --rate 2000000 --duration 5 \\
        -- --subscribers 10000 --subscriber-hunts all

The arguments after the first `--` go to both runs, those after the
second only to the run with subscribers. The JSON files stay in --out
(default: a fresh temporary directory) for a closer look.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def split_args(argv):
    if "--" not in argv:
        sys.exit("usage: fanout-pairs.py [options] -- BENCH_ARGS -- FANOUT_ARGS")
    i = argv.index("--")
    own, rest = argv[:i], argv[i + 1:]
    if "--" not in rest:
        sys.exit("usage: fanout-pairs.py [options] -- BENCH_ARGS -- FANOUT_ARGS (the second -- is missing)")
    j = rest.index("--")
    return own, rest[:j], rest[j + 1:]


def steps(doc):
    """The judged steps of a run's JSON: a single run is one step."""
    if "steps" in doc:
        return doc["steps"]
    return [doc]


def figures(doc):
    """(achieved, ack p99 ms, knee or None, fan-out of the top step or None,
    server CPU cores of the top step or None)."""
    ss = steps(doc)
    knee = doc.get("knee_events_per_s")
    # A ramp: the knee's step; a single run: its one step.
    top = ss[0]
    if knee is not None:
        top = max((s for s in ss if s.get("passed")), key=lambda s: s["offered_events_per_s"], default=top)
    server = top.get("server") or {}
    return (
        top["achieved_events_per_s"],
        top["latency_us"]["p99"] / 1e3,
        knee,
        top.get("fanout"),
        server.get("cpu_cores"),
    )


def fanout_cost_ns(without, with_):
    """The server's CPU per delivered update beyond its ingest: (cores with
    - cores without scaled to the events achieved with) / updates per second."""
    achieved0, cores0 = without[0], without[4]
    achieved1, fan, cores1 = with_[0], with_[3], with_[4]
    if not fan or cores0 is None or cores1 is None or not achieved0:
        return None
    updates = fan.get("updates_per_s", 0) + fan.get("slow_updates_per_s", 0)
    if updates <= 0:
        return None
    return (cores1 - cores0 * achieved1 / achieved0) * 1e9 / updates


def run(trove, args, path):
    cmd = [trove, "bench", *args, "--json", path]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"trove bench failed ({done.returncode}): {' '.join(cmd)}")
    with open(path) as f:
        return json.load(f)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M{unit}"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.1f}k{unit}"
    return f"{v:.2f}{unit}"


def main():
    own, bench, fanout = split_args(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--trove", default="target/release/trove")
    p.add_argument("--out", default=None)
    o = p.parse_args(own)
    if o.pairs < 1:
        sys.exit("--pairs must be at least 1")
    out = o.out or tempfile.mkdtemp(prefix="fanout-pairs-")
    os.makedirs(out, exist_ok=True)
    without, with_ = [], []
    for i in range(o.pairs):
        without.append(figures(run(o.trove, [*bench, "--watch", "0"], os.path.join(out, f"without-{i}.json"))))
        with_.append(figures(run(o.trove, [*bench, *fanout], os.path.join(out, f"with-{i}.json"))))
    print(f"{o.pairs} interleaved pairs; JSON in {out}")
    print(f"{'':24} {'without':>12} {'with':>12} {'with/without':>13}")
    for name, k, unit in [("achieved events/s", 0, "/s"), ("ack p99 ms", 1, ""), ("knee events/s", 2, "/s")]:
        a, b = med([f[k] for f in without]), med([f[k] for f in with_])
        ratio = f"{b / a:.3f}" if a and b is not None else "-"
        print(f"{name:24} {fmt(a, unit):>12} {fmt(b, unit):>12} {ratio:>13}")
    fans = [f[3] for f in with_ if f[3]]
    if fans:
        def m(key):
            return med([f.get(key) for f in fans])
        lat = [f["latency_us"] for f in fans if f.get("latency_us")]
        p99 = med([x["p99"] / 1e3 for x in lat])
        cost = med([fanout_cost_ns(a, b) for a, b in zip(without, with_)])
        lower = med([f.get("updates_lower_bound") for f in fans])
        untimed = med([f.get("updates_untimed") for f in fans])
        late = med([f.get("updates_late") for f in fans])
        busiest = med([f.get("generator_busiest_thread_cores") for f in fans])
        print(
            f"with: updates {fmt(m('updates_per_s'), '/s')}, update p99 {fmt(p99)} ms, "
            f"gaps {m('gaps')}, slow gaps {m('slow_gaps')}, server gaps {m('server_gaps')}, "
            f"server fan-out {fmt(cost)} ns/update (all its CPU: {fmt(m('server_cpu_ns_per_update'))}), "
            f"generator {fmt(m('generator_cpu_ns_per_update'))} ns/update ({fmt(m('generator_cpu_cores'))} cores, "
            f"busiest thread {fmt(busiest)}), p99 lower bounds {lower}, untimed {untimed}, late {late} "
            "(medians)"
        )


if __name__ == "__main__":
    main()
