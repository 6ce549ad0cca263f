#!/bin/bash
# One node on JetStream R1 against the same node on its local journal, open loop at RATE (default 2 M/s), 2 interleaved pairs.
# Needs nats-server on PATH and a release build; run from the repository root.
T=${T:-./target/release/trove}
D=$(mktemp -d)
nats-server -js -p 14300 -sd $D/js > $D/nats.log 2>&1 &
NATS=$!
sleep 1
run() {
  local label=$1; shift
  $T serve "$@" --tcp 127.0.0.1:17600 --ws off --control 127.0.0.1:17680 > $D/serve.log 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:17680/health >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1
  $T bench --target 127.0.0.1:17600 --metrics 127.0.0.1:17680 --rate ${RATE:-2000000} --duration 5 --json $D/o.json > $D/b.out 2>&1
  python3 -c "
import json; s=json.load(open('$D/o.json'))
l=s['latency_us']; print('$label', 'achieved', round(s.get('achieved_events_per_s',0)/1e6,2), 'M/s p50', l['p50'], 'p99', l['p99'])" 2>&1 | tail -1
  kill -TERM $pid; wait $pid 2>/dev/null
}
for i in 1 2; do
run cluster-R1-p2 --cluster nats://127.0.0.1:14300 --node m --cluster-name o$i --partitions 2
rm -rf $D/data; run local-group --data $D/data
done
kill $NATS; rm -rf $D
