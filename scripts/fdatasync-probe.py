#!/usr/bin/env python3
"""Times what a journal group costs on this disk: an O_DIRECT append of
N 4 KiB blocks (as the journal writes) and the fdatasync after it.
Prints p50/p90/p99/max of each, in microseconds.

    python3 scripts/fdatasync-probe.py [DIR] [--groups 2000] [--blocks 1] [--gap-ms MS] [--prefill]
"""
import argparse, mmap, os, time

ap = argparse.ArgumentParser()
ap.add_argument("dir", nargs="?", default=".")
ap.add_argument("--groups", type=int, default=2000)
ap.add_argument("--blocks", type=int, default=1, help="4 KiB blocks per write")
ap.add_argument("--gap-ms", type=float, default=0, help="sleep this long after each sync (0: back to back)")
ap.add_argument("--prefill", action="store_true", help="write the whole file once first (no size or extent change per sync)")
a = ap.parse_args()
path = os.path.join(a.dir, f"fdatasync-probe-{os.getpid()}.tmp")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_DIRECT", 0), 0o600)
buf = mmap.mmap(-1, 4096 * a.blocks)  # page-aligned, as O_DIRECT needs
buf.write(b"\x01" * (4096 * a.blocks))
writes, syncs = [], []
if a.prefill:
    for i in range(a.groups):
        os.pwrite(fd, buf, i * 4096 * a.blocks)
    os.fsync(fd)
try:
    offset = 0
    for _ in range(a.groups):
        t0 = time.perf_counter_ns()
        os.pwrite(fd, buf, offset)
        t1 = time.perf_counter_ns()
        os.fdatasync(fd)
        t2 = time.perf_counter_ns()
        writes.append(t1 - t0)
        syncs.append(t2 - t1)
        offset += 4096 * a.blocks
        if a.gap_ms:
            time.sleep(a.gap_ms / 1000)
finally:
    os.close(fd)
    os.unlink(path)

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] / 1000

for name, xs in (("write", writes), ("fdatasync", syncs)):
    print(f"{name:10} p50 {pct(xs, .5):8.1f} us  p90 {pct(xs, .9):8.1f}  p99 {pct(xs, .99):8.1f}  max {max(xs) / 1000:8.1f}")
