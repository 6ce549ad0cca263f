#!/bin/bash
# Open-loop latency through the SDK against one cluster, variants side by side: one NATS
# server (R1), NODES trove nodes (PARTS partitions), then interleaved rounds of
# `trove bench --target N0 ... --rate RATE` with each variant's extra flags.
# A variant without --metrics drives node 0 through the single-node `Producer` (the bench
# finds the cluster only through --metrics), which works when node 0 owns every partition
# (NODES=1): the same server through both SDK paths.
# Prints per run: p50/p99, send lag p99, admitted p50, client CPU, the server stages' p50
# breakdown (with --metrics), events per JetStream message and the mean publish-ack wait
# (`trove_cluster_append_ack_seconds`: a write's messages sent to all acknowledged).
# Needs nats-server on PATH and a release build; run from the repository root.
# Knobs: T, PARTS (6), NODES (1), RATE (1000000), SECONDS_RUN (5), ROUNDS (2), CONNS (4),
# VARIANTS: `label=flags;label=flags` (flags may say @M for `--metrics N0_CONTROL`, @L for
# a single node on its local journal, `trove serve --data`, started beside the cluster, with
# its --metrics: the baseline without JetStream).
set -u
T=${T:-./target/release/trove}
PARTS=${PARTS:-6}
NODES=${NODES:-1}
RATE=${RATE:-1000000}
SECONDS_RUN=${SECONDS_RUN:-5}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-4}
VARIANTS=${VARIANTS:-"producer=;cluster=@M"}
D=$(mktemp -d)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done; }
trap 'stop_all; rm -rf $D' EXIT

nats-server -js -a 127.0.0.1 -p 14600 -sd $D/js > $D/nats.log 2>&1 & PIDS+=($!)
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/14600) 2>/dev/null && break; sleep 0.1; done
for i in $(seq 0 $((NODES - 1))); do
  $T serve --cluster nats://127.0.0.1:14600 --node n$i --cluster-name lat --partitions $PARTS \
    --tcp 127.0.0.1:$((17900 + i)) --ws off --control 127.0.0.1:$((17980 + i)) > $D/node$i.log 2>&1 & PIDS+=($!)
  for _ in $(seq 200); do curl -sf 127.0.0.1:$((17980 + i))/health >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf 127.0.0.1:$((17980 + i))/health >/dev/null 2>&1 || { echo "node $i did not start:"; tail -5 $D/node$i.log; exit 1; }
done
case "$VARIANTS" in *@L*)
  $T serve --data $D/local --tcp 127.0.0.1:17990 --ws off --control 127.0.0.1:17991 > $D/local.log 2>&1 & PIDS+=($!)
  for _ in $(seq 200); do curl -sf 127.0.0.1:17991/health >/dev/null 2>&1 && break; sleep 0.1; done;;
esac
for _ in $(seq 300); do
  curl -sf 127.0.0.1:17980/cluster 2>/dev/null | python3 -c "
import json, sys
m = json.load(sys.stdin); owners = [e['owner']['node'] if e['owner'] else None for e in m['map']]
sys.exit(0 if None not in owners and len(set(owners)) == $NODES else 1)" 2>/dev/null && break
  sleep 0.1
done

# Node 0's JetStream messages, events acknowledged, and its publish-ack wait (sum, count).
appends() { curl -sf 127.0.0.1:17980/metrics | awk '
  /^trove_cluster_appends_total /{m=$2} /^trove_events_acknowledged_total /{e=$2}
  /^trove_cluster_append_ack_seconds_sum /{s=$2} /^trove_cluster_append_ack_seconds_count /{c=$2}
  END{print m+0, e+0, s+0, c+0}'; }

IFS=';' read -ra VS <<< "$VARIANTS"
for r in $(seq $ROUNDS); do
  for v in "${VS[@]}"; do
    label=${v%%=*}; flags=${v#*=}; flags=${flags//@M/--metrics 127.0.0.1:17980}
    target=127.0.0.1:17900
    case "$flags" in *@L*) target=127.0.0.1:17990; flags=${flags//@L/--metrics 127.0.0.1:17991};; esac
    case "$flags" in *--connections*) ;; *) flags="$flags --connections $CONNS";; esac
    rm -f $D/o.json
    a0=$(appends)
    if [ -n "${TOP:-}" ]; then # the busiest threads a second into the step, over 2 s
      rm -f $D/top.txt
      ( for _ in $(seq 300); do grep -q "setup acknowledged" $D/b.out 2>/dev/null && break; sleep 0.1; done
        sleep 1; top -H -b -n 2 -d 2 -w 200 | awk '/^top -/{n++} n==2' | sed -n 7,22p > $D/top.tmp; mv $D/top.tmp $D/top.txt ) &
      TOP_PID=$!
    fi
    # shellcheck disable=SC2086
    $T bench --target $target $flags --rate $RATE --duration $SECONDS_RUN --force \
      --watch 0 --slo-ms 60000 --drain-timeout 5 --json $D/o.json > $D/b.out 2>&1
    a1=$(appends)
    python3 - "$label" "$r" "$a0" "$a1" "$D" <<'PY'
import json, sys
label, r, a0, a1, d = sys.argv[1:6]
try:
    v = json.load(open(d + '/o.json'))
except Exception:
    print(label, 'round', r, 'no figures:', open(d + '/b.out').read()[-400:].replace('\n', ' ')); raise SystemExit
l = v['latency_us']; lag = v['send_lag_us']; adm = v['admitted_latency_us']
x0 = [float(t) for t in a0.split()]; x1 = [float(t) for t in a1.split()]
per = ''
if len(x0) == 4 and len(x1) == 4 and x1[0] > x0[0]:
    msgs, events, ack_s, acks = [b - a for a, b in zip(x0, x1)]
    per = ' | %.0f events/message, node 0 publish-ack wait mean %.2f ms' % (events / max(msgs, 1), ack_s * 1e3 / max(acks, 1))
bd = ''
for b in v.get('latency_breakdown', []):
    if b['percentile'] == 'p50':
        bd = ' | p50 ' + ' '.join('%s %.2f' % (s['stage'], s['us'] / 1e3) for s in b['stages']) + ' rest %.2f' % (b['rest_us'] / 1e3)
print('%-10s round %s: acked %.2f M/s p50 %.2f ms p99 %.2f ms | send lag p99 %.2f | admitted p50 %.2f | client %.2f cores | stalls %d%s%s' % (
    label, r, v['achieved_events_per_s'] / 1e6, l['p50'] / 1e3, l['p99'] / 1e3, lag['p99'] / 1e3, adm['p50'] / 1e3,
    v['client_cpu_cores'], v['machine_stalls'].get('count', 0) if isinstance(v.get('machine_stalls'), dict) else 0, per, bd))
PY
    if [ -n "${TOP:-}" ]; then wait $TOP_PID; cat $D/top.txt 2>/dev/null; fi
  done
done
