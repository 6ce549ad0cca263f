#!/usr/bin/env python3
"""Measures how often this machine stops running a busy thread.

One process per core spins on the monotonic clock for DURATION seconds and
records every gap between two consecutive readings longer than 1 ms: time
in which it was runnable but did not run (a host that deschedules the VM's
virtual CPUs, an interrupt storm, a kernel stall). Run it on an otherwise
idle machine; gaps that every process sees at the same moment are pauses of
the whole machine.

    python3 scripts/pause-probe.py [DURATION_S] [PROCESSES]

The load generator's p99 cannot be lower than what these pauses impose:
an event that arrives during a 20 ms pause waits at least the rest of it,
and so does the backlog the pause leaves behind.
"""

import multiprocessing
import os
import queue
import sys
import time

GAP_NS = 1_000_000


def spin(k, duration_s, out):
    clock = time.clock_gettime_ns
    mono = time.CLOCK_MONOTONIC
    end = clock(mono) + int(duration_s * 1e9)
    last = clock(mono)
    gaps = []
    while last < end:
        now = clock(mono)
        if now - last > GAP_NS:
            gaps.append((last, now))
        last = now
    out.put((k, gaps))


def overlap(a, b):
    """Intervals covered by both sorted interval lists."""
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi - lo > GAP_NS:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def summary(gaps, duration_s):
    ms = sorted((e - s) / 1e6 for s, e in gaps)
    lost = sum(ms)
    over = lambda t: sum(1 for g in ms if g > t)
    return (
        f"gaps >1 ms: {len(ms)}, >5 ms: {over(5)}, >10 ms: {over(10)}, "
        f"max {ms[-1] if ms else 0:.1f} ms, lost {lost:.1f} ms ({100 * lost / (duration_s * 1e3):.2f}% of the time)"
    )


USAGE = "usage: pause-probe.py [DURATION_S in (0, 3600]] [PROCESSES in 1..=256]"


def main():
    try:
        duration_s = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
        procs = int(sys.argv[2]) if len(sys.argv) > 2 else (os.cpu_count() or 1)
    except ValueError:
        sys.exit(USAGE)
    if not 0 < duration_s <= 3600 or not 0 < procs <= 256 or len(sys.argv) > 3:
        sys.exit(USAGE)
    out = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=spin, args=(k, duration_s, out)) for k in range(procs)]
    for w in workers:
        w.start()
    try:
        # A worker that died never answers: give up past its deadline.
        results = dict(out.get(timeout=duration_s + 60) for _ in workers)
    except queue.Empty:
        for w in workers:
            w.terminate()
        sys.exit("a probe process did not report")
    for w in workers:
        w.join()
    results = [results[k] for k in range(procs)]
    for k, gaps in enumerate(results):
        print(f"process {k}: {summary(gaps, duration_s)}")
    common = results[0]
    for gaps in results[1:]:
        common = overlap(common, gaps)
    print(f"all {procs} at once: {summary(common, duration_s)}")


if __name__ == "__main__":
    main()
