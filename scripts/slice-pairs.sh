#!/bin/bash
# Interleaved pairs at 75% of the quiet knee (9.6 M events/s, group commit):
# the kernel's default EEVDF slice against 100 us for every thread of the
# generator and of the server it starts (scripts/sched-slice.py).
#   PAIRS=7 scripts/slice-pairs.sh      (from the repository root)
# Reports land in $OUT (default /tmp/slice-pairs), one line per run here.
set -eu
T=${T:-target/release/trove}
OUT=${OUT:-/tmp/slice-pairs}
mkdir -p "$OUT"
for i in $(seq 1 "${PAIRS:-7}"); do
  for s in 0 100; do
    run=("$T" bench --fsync group --rate 9600000 --duration 5 --json "$OUT/p$i-s$s.json")
    if [ "$s" = 0 ]; then "${run[@]}" > "$OUT/p$i-s$s.txt" 2>&1
    else scripts/sched-slice.py "$s" "${run[@]}" > "$OUT/p$i-s$s.txt" 2>&1; fi
    python3 - "$OUT/p$i-s$s.json" "$i" "$s" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
m = d["machine_stalls"]
print(f"pair {sys.argv[2]} slice {sys.argv[3]} us: p50 {d['latency_us']['p50']} us, p99 {d['latency_us']['p99']} us, "
      f"BUSY {d['busy_replies_per_s']:.0f}/s, waits >= 1 ms {m['count']} ({m['lost_us'] / 1000:.0f} ms lost)")
PY
  done
done
