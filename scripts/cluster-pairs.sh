#!/bin/bash
# One node on JetStream R1 against the same node on its local journal, closed loop
# (bench net --target), PAIRS interleaved pairs, PARTS partitions. Needs nats-server on
# PATH and a release build; run from the repository root.
T=${T:-./target/release/trove}
EVENTS=${EVENTS:-20000000}
PAIRS=${PAIRS:-3}
PARTS=${PARTS:-2}
D=$(mktemp -d)
nats-server -js -p 14300 -sd $D/js > $D/nats.log 2>&1 &
NATS=$!
sleep 1
run() { # $1 = label, rest = serve args
  local label=$1; shift
  $T serve "$@" --tcp 127.0.0.1:17600 --ws off --control 127.0.0.1:17680 > $D/serve.log 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:17680/health >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1
  $T bench net --target 127.0.0.1:17600 --connections 4 --events $EVENTS --json > $D/out.json 2>$D/bench.err
  python3 -c "import json,sys; d=json.load(open('$D/out.json')); l=d['latency_us']; print('$label', round(d['acked_events_per_s']/1e6,2), 'M/s p50', l['p50'], 'p99', l['p99'])"
  kill -TERM $pid; wait $pid 2>/dev/null
}
for i in $(seq $PAIRS); do
  run "cluster-R1-p$PARTS" --cluster nats://127.0.0.1:14300 --node m --cluster-name b$i --partitions $PARTS
  rm -rf $D/data; run "local-group" --data $D/data
done
kill $NATS; rm -rf $D
