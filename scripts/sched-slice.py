#!/usr/bin/env python3
"""Runs a command with a shorter EEVDF time slice (Linux 6.12 or later).

    scripts/sched-slice.py SLICE_US CMD [ARGS...]

Sets `sched_attr.sched_runtime` (the slice a SCHED_OTHER task asks for,
clamped by the kernel to 0.1-100 ms; 0 = the kernel's default, 0.7 ms x
(1 + log2 CPUs), 1.4 ms on 2 vCPUs) of this process, then execs CMD: every
thread and child process CMD starts inherits it. A task with a shorter
slice gets an earlier virtual deadline, so when it wakes it preempts the
running task sooner. Used to measure whether the run-queue waits that
decide the open-loop tail on 2 shared cores (docs/benchmarks.md, issue
20) shrink when the server's and the generator's threads ask for short
slices: `scripts/sched-slice.py 100 target/release/trove bench ...`.
"""
import ctypes
import os
import struct
import sys

SYS_SCHED_SETATTR = 314  # x86_64

if len(sys.argv) < 3:
    sys.exit(__doc__)
slice_ns = int(sys.argv[1]) * 1000
libc = ctypes.CDLL(None, use_errno=True)
# struct sched_attr: size, policy, flags, nice, priority, runtime, deadline,
# period, util_min, util_max (56 bytes).
attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQII", 56, 0, 0, 0, 0, slice_ns, 0, 0, 0, 0), 56)
if libc.syscall(SYS_SCHED_SETATTR, 0, attr, 0) != 0:
    sys.exit(f"sched_setattr: {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[2], sys.argv[2:])
