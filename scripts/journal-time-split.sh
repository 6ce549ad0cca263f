#!/bin/bash
# Where a journal thread's time goes: one `trove serve --fsync POLICY` on a
# fresh data directory, driven by `trove bench --target` at RATE events/s
# for 6 s; `perf trace -s` of the server's write, sync and futex calls for
# 3 s in the middle, then the server's fsync and ingest-to-durable
# histograms from /metrics (log2 buckets: upper bounds).
# docs/decisions/0009-group-commit.md.
#
#   scripts/journal-time-split.sh RATE [POLICY] [TROVE_BINARY]
set -u
RATE=${1:?rate in events/s}
POLICY=${2:-group}
T=${3:-target/release/trove}
D=$(mktemp -d /tmp/trove-split.XXXX)
"$T" serve --data "$D/data" --fsync "$POLICY" --tcp 127.0.0.1:0 --ws off --control 127.0.0.1:0 2> "$D/err" &
PID=$!
for _ in $(seq 150); do grep -q "control plane on" "$D/err" && break; sleep 0.2; done
sleep 0.5
CTL=$(grep -o "control plane on http://[0-9.:]*" "$D/err" | sed 's/.*http:\/\///')
TCP=$(grep -oE "(protocol v1|tcp)[^0-9]*[0-9.]+:[0-9]+" "$D/err" | grep -oE "[0-9.]+:[0-9]+" | head -1)
( "$T" bench --target "$TCP" --metrics "$CTL" --rate "$RATE" --duration 6 2>&1 | grep "step 0" ) &
B=$!
sleep 2.5
timeout -s INT 3 perf trace -s -p "$PID" -e pwrite64,fdatasync,futex 2> "$D/trace" > /dev/null
wait "$B"
for t in /proc/"$PID"/task/*; do
  echo "$(cat "$t"/comm) $(awk '{print "utime_ticks", $14, "stime_ticks", $15}' "$t"/stat)"
done | grep -E "journal|shard"
grep -A12 "trove-journal" "$D/trace" | grep -E "trove-journal|pwrite64|fdatasync|futex"
curl -s "$CTL/metrics" > "$D/metrics"
python3 - "$D/metrics" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def q(name):
    b = {}
    for m in re.finditer(r'^%s_bucket\{(?:[^}]*,)?le="([^"]+)"\} (\S+)' % name, text, re.M):
        le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        b[le] = b.get(le, 0) + float(m.group(2))
    les = sorted(b)
    if not les:
        return "none"
    total = b[les[-1]]
    at = lambda p: next(f"{le * 1e6:.0f}us" for le in les if b[le] >= p * total)
    return f"n={total:.0f} p50<={at(.5)} p99<={at(.99)}"
print("fsync", q("trove_journal_fsync_seconds"), "| ingest_to_durable", q("trove_ingest_to_durable_seconds"))
PY
kill -INT "$PID"; wait "$PID" 2> /dev/null
rm -rf "$D"
