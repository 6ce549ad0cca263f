#!/bin/bash
# Throughput per added node: 1, 2 and 3 trove nodes of one cluster, on one NATS server (R1)
# and on three (R3, --replicas 3), all on this box, driven through one node by
# `trove bench --target ... --metrics ...` (which finds the cluster and routes through the
# SDK's ClusterProducer). Per run: aggregate and per-node acknowledged events/s, p50/p99.
#   saturated: open loop offered far above capacity (SAT, default 50 M/s): achieved = capacity
#   open:      open loop at a fixed RATE (default 1 M/s)
# Every process shares this box's cores: the figures say what one box does with N nodes,
# not what N machines do (docs/benchmarks.md "Throughput per added node" models that).
# Needs nats-server (2.10+) on PATH and a release build; run from the repository root.
# Knobs: T (trove binary), PARTS (partitions, default 6), SECONDS_RUN (default 5), RATE,
# SAT, NODES ("1 2 3"), SETUPS ("R1 R3"), CONNS (producer connections, default 4).
set -u
T=${T:-./target/release/trove}
PARTS=${PARTS:-6}
SECONDS_RUN=${SECONDS_RUN:-5}
RATE=${RATE:-1000000}
SAT=${SAT:-50000000}
NODES=${NODES:-"1 2 3"}
SETUPS=${SETUPS:-"R1 R3"}
CONNS=${CONNS:-4}
D=$(mktemp -d)
PIDS=()
NATS_PIDS=()
NODE_PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done; PIDS=(); NATS_PIDS=(); NODE_PIDS=(); }
trap 'stop_all; rm -rf $D' EXIT

start_nats() { # $1 = R1 | R3; sets URLS
  rm -rf $D/js*
  if [ "$1" = R1 ]; then
    nats-server -js -a 127.0.0.1 -p 14400 -sd $D/js0 > $D/nats0.log 2>&1 & PIDS+=($!); NATS_PIDS+=($!)
    URLS=nats://127.0.0.1:14400
  else
    local routes="nats-route://127.0.0.1:14500,nats-route://127.0.0.1:14501,nats-route://127.0.0.1:14502"
    URLS=""
    for i in 0 1 2; do
      nats-server -js -a 127.0.0.1 -p $((14400 + i)) -sd $D/js$i -n n$i --cluster_name cnodes \
        --cluster nats://127.0.0.1:$((14500 + i)) --routes $routes > $D/nats$i.log 2>&1 & PIDS+=($!); NATS_PIDS+=($!)
      URLS="$URLS${URLS:+,}nats://127.0.0.1:$((14400 + i))"
    done
  fi
  for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/14400) 2>/dev/null && break; sleep 0.1; done
  sleep 2 # R3: the meta leader
}

start_nodes() { # $1 = node count, $2 = replicas, $3 = cluster name
  for i in $(seq 0 $(($1 - 1))); do
    $T serve --cluster $URLS --node n$i --cluster-name $3 --partitions $PARTS --replicas $2 \
      --tcp 127.0.0.1:$((17700 + i)) --ws off --control 127.0.0.1:$((17780 + i)) > $D/node$i.log 2>&1 & PIDS+=($!); NODE_PIDS+=($!)
    # The first node creates the cluster; the others join it.
    for _ in $(seq 200); do curl -sf 127.0.0.1:$((17780 + i))/health >/dev/null 2>&1 && break; sleep 0.1; done
  done
  # Every partition owned, spread over every node.
  for _ in $(seq 300); do
    curl -sf 127.0.0.1:17780/cluster 2>/dev/null | python3 -c "
import json, sys
m = json.load(sys.stdin); owners = [e['owner']['node'] if e['owner'] else None for e in m['map']]
sys.exit(0 if None not in owners and len(set(owners)) == $1 else 1)" && return 0
    sleep 0.1
  done
  echo "the partitions never spread over $1 nodes" >&2
}

costs() { # CPU seconds of the NATS servers and of the nodes, and the nodes' counters
  python3 - "${NATS_PIDS[*]}" "${NODE_PIDS[*]}" $N_NODES <<'PY'
import sys, urllib.request
def cpu(pids):
    t = 0
    for p in pids.split():
        try:
            f = open('/proc/%s/stat' % p).read().rsplit(')', 1)[1].split()
            t += (int(f[11]) + int(f[12])) / 100.0
        except Exception:
            pass
    return t
acked = msgs = 0.0
for i in range(int(sys.argv[3])):
    try:
        text = urllib.request.urlopen('http://127.0.0.1:%d/metrics' % (17780 + i), timeout=5).read().decode()
    except Exception:
        continue
    for line in text.splitlines():
        if line.startswith('trove_events_acknowledged_total '):
            acked += float(line.split()[1])
        elif line.startswith('trove_cluster_appends_total '):
            msgs += float(line.split()[1])
print(cpu(sys.argv[1]), cpu(sys.argv[2]), acked, msgs)
PY
}

bench() { # $1 = label, $2 = rate
  local c0 c1
  c0=$(costs)
  # --force: the second run of a cluster plays into the first run's hunts.
  $T bench --target 127.0.0.1:17700 --metrics 127.0.0.1:17780 --rate $2 --duration $SECONDS_RUN \
    --force --connections $CONNS --watch 0 --slo-ms 60000 --drain-timeout 3 --json $D/o.json > $D/b.out 2>&1
  c1=$(costs)
  python3 -c "
import json
try:
    v = json.load(open('$D/o.json'))
except Exception as e:
    print('$1', 'no figures:', open('$D/b.out').read()[-300:].replace('\\n', ' ')); raise SystemExit
l = v['latency_us']; nodes = (v.get('server') or {}).get('nodes', [])
per = ' '.join('%s=%.2f' % (n['node'], n['acknowledged_events_per_s'] / 1e6) for n in nodes)
a, b = [float(x) for x in '$c0'.split()], [float(x) for x in '$c1'.split()]
nats_s, trove_s, events, msgs = [y - x for x, y in zip(a, b)]
events = max(events, 1.0); msgs = max(msgs, 1.0)
print('$1', 'acked %.2f M/s' % (v['achieved_events_per_s'] / 1e6), 'p50 %.2f ms p99 %.2f ms' % (l['p50'] / 1e3, l['p99'] / 1e3),
      '| per node (M/s):', per,
      '| whole run: trove %.0f ns/event, nats %.0f ns/event, %.0f events/message, trove %.1f us/message, nats %.1f us/message' % (
          trove_s * 1e9 / events, nats_s * 1e9 / events, events / msgs, trove_s * 1e6 / msgs, nats_s * 1e6 / msgs))"
}

run=0
for setup in $SETUPS; do
  for n in $NODES; do
    run=$((run + 1))
    start_nats $setup
    replicas=1; [ $setup = R3 ] && replicas=3
    N_NODES=$n
    start_nodes $n $replicas c$run
    bench "$setup nodes=$n saturated" $SAT
    bench "$setup nodes=$n open@$RATE" $RATE
    stop_all
  done
done
