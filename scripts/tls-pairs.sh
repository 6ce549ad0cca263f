#!/bin/bash
# TLS's cost (docs/benchmarks.md, "TLS"): `trove bench net` (closed loop, the
# in-process server) in PAIRS interleaved pairs, plain TCP then TLS at the same
# settings; prints each run, each pair's ratio TLS/plain and the median ratio.
# With OLD=path/to/an/older/trove, each pair is that binary's plain run then
# this one's instead (the plain path before and after a change). Needs openssl
# and a release build; run from the repository root.
set -euo pipefail
T=${T:-./target/release/trove}
OLD=${OLD:-}
EVENTS=${EVENTS:-20000000}
PAIRS=${PAIRS:-5}
CONNECTIONS=${CONNECTIONS:-4}
FSYNC=${FSYNC:-group}
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
scripts/tls-cert.sh "$D/certs" >/dev/null
run() { # $1 = binary, rest = extra args; prints acknowledged M events/s
  local bin=$1; shift
  "$bin" bench net --connections "$CONNECTIONS" --events "$EVENTS" --fsync "$FSYNC" --json "$@" \
    > "$D/out.json" 2> "$D/err" || { cat "$D/err" >&2; exit 1; }
  python3 -c "import json; print(round(json.load(open('$D/out.json'))['acked_events_per_s']/1e6, 3))"
}
ratios=()
for i in $(seq "$PAIRS"); do
  if [ -n "$OLD" ]; then
    a=$(run "$OLD"); b=$(run "$T")
    echo "pair $i: old plain $a M/s, new plain $b M/s"
  else
    a=$(run "$T")
    b=$(run "$T" --tls-cert "$D/certs/cert.pem" --tls-key "$D/certs/key.pem" --tls-ca "$D/certs/ca.pem")
    echo "pair $i: plain $a M/s, TLS $b M/s"
  fi
  ratios+=("$(python3 -c "print(round($b / $a, 3))")")
done
python3 -c "import statistics, sys; r=[float(x) for x in sys.argv[1:]]; print('ratios', r, 'median', statistics.median(r))" "${ratios[@]}"
