#!/usr/bin/env python3
"""Can this disk write while it syncs? Times O_DIRECT appends of N 4 KiB
blocks for SECONDS alone, then again while a second thread runs
`fdatasync` on the same file back to back. If the appends slow to the
sync's pace, the device serialises the two, and a journal that overlaps
its sync with the next write gains nothing here
(docs/decisions/0009-group-commit.md).

    python3 scripts/sync-overlap-probe.py [DIR] [--seconds 3] [--blocks 16]
"""
import argparse, mmap, os, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("dir", nargs="?", default=".")
ap.add_argument("--seconds", type=float, default=3)
ap.add_argument("--blocks", type=int, default=16)
a = ap.parse_args()
size = 4096 * a.blocks
buf = mmap.mmap(-1, size)
buf.write(b"\x01" * size)

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] / 1000 if xs else float("nan")

def run(with_sync):
    path = os.path.join(a.dir, f"sync-overlap-probe-{os.getpid()}.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o600)
    stop = threading.Event()
    syncs = []
    def syncer():
        while not stop.is_set():
            t = time.perf_counter_ns()
            os.fdatasync(fd)
            syncs.append(time.perf_counter_ns() - t)
    t = threading.Thread(target=syncer)
    if with_sync:
        t.start()
    writes, offset, end = [], 0, time.monotonic() + a.seconds
    while time.monotonic() < end:
        t0 = time.perf_counter_ns()
        os.pwrite(fd, buf, offset)
        writes.append(time.perf_counter_ns() - t0)
        offset += size
    stop.set()
    if with_sync:
        t.join()
    os.close(fd)
    os.unlink(path)
    label = "writes while syncing" if with_sync else "writes alone        "
    print(f"{label}: {len(writes) / a.seconds:7.0f}/s  p50 {pct(writes, .5):7.1f} us  p90 {pct(writes, .9):7.1f}"
          + (f"   | syncs {len(syncs) / a.seconds:5.0f}/s p50 {pct(syncs, .5):7.1f} us" if with_sync else ""))

for _ in range(2):
    run(False)
    run(True)
