#!/usr/bin/env python3
"""Where a `trove bench engine` run's CPU went, per event: busy, stolen, idle.

Runs the given `trove bench engine ... --json` command, samples
/proc/stat (the whole machine) and the run's shard threads every 100 ms,
and sums the machine's time over the samples in which the shards were
busy (more than one core's worth of shard CPU: the measured phase of a
two-shard run, not the event generation before it). Divided by the events
applied in that time (the run's own rate times the time summed):

- busy: user, nice, system, irq and softirq time, on every core;
- steal: time the host ran something else on this VM's virtual CPUs;
- idle: idle and iowait time.

    python3 scripts/cpu-per-event.py trove bench engine --clock wall \\
        --shards 2 --window 256 --events 60000000 [--data DIR --fsync interval=5] --json

On a machine with no idle time, busy plus steal per event is what the
throughput pays for each event; a journal that adds stolen time (the
host's side of the disk writes) costs throughput without showing in any
of the engine's threads.
"""

import glob
import json
import os
import subprocess
import sys
import time

# The shards' CPU, in cores, above which a sample counts as measured.
SHARD_CORES_MIN = 1.0


def machine():
    fields = open("/proc/stat").readline().split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[:8])
    return user + nice + system + irq + softirq, steal, idle + iowait


def shard_ticks(pid):
    total = 0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            if not open(f"{task}/comm").read().startswith("trove-shard"):
                continue
            fields = open(f"{task}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass  # the thread ended between the listing and the read
    return total


def main():
    command = sys.argv[1:]
    if "--json" not in command:
        sys.exit("usage: cpu-per-event.py TROVE bench engine ... --json")
    hz = os.sysconf("SC_CLK_TCK")
    run = subprocess.Popen(command, stdout=subprocess.PIPE)
    samples = []
    while run.poll() is None:
        samples.append((time.monotonic(), machine(), shard_ticks(run.pid)))
        time.sleep(0.1)
    out = run.stdout.read()
    if run.returncode != 0:
        sys.exit(f"the run failed ({run.returncode})")
    rate = json.loads(out)["events_per_s"]
    busy = steal = idle = seconds = 0.0
    for (t0, m0, s0), (t1, m1, s1) in zip(samples, samples[1:]):
        if (s1 - s0) / hz / (t1 - t0) <= SHARD_CORES_MIN:
            continue
        busy += (m1[0] - m0[0]) / hz
        steal += (m1[1] - m0[1]) / hz
        idle += (m1[2] - m0[2]) / hz
        seconds += t1 - t0
    if seconds == 0:
        sys.exit("no sample with the shards busy: too short a run, or one shard")
    events = rate * seconds
    print(
        f"{rate / 1e6:.2f} M events/s; over {seconds:.2f} s with the shards busy, per event: "
        f"busy {busy * 1e9 / events:.1f} ns, steal {steal * 1e9 / events:.1f} ns, "
        f"idle {idle * 1e9 / events:.1f} ns"
    )


if __name__ == "__main__":
    main()
