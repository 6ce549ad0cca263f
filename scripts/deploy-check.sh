#!/usr/bin/env bash
# Checks deploy/ against the real tools: promtool on the Prometheus config
# and alert rules (with the rules' unit tests), systemd-analyze on the unit,
# the compose file's and Dockerfile's references, and a real Prometheus
# scraping a real `trove serve` with the shipped config, its alert rules
# evaluated against the server's series. CI runs it (.ci/run); locally:
#
#   cargo build --release -p trove && scripts/deploy-check.sh
#
# Needs promtool and prometheus (Debian: prometheus), systemd-analyze
# (Debian: systemd) and python3 with PyYAML. Docker images are not built
# here: the machine has no Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
trove="${TROVE:-$PWD/target/release/trove}"
test -x "$trove" || { echo "no $trove: cargo build --release -p trove" >&2; exit 1; }

scratch="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$scratch"
}
trap cleanup EXIT

echo "--- promtool: config, rules and their tests"
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/rules.test.yml

echo "--- systemd-analyze verify (warnings fail too)"
sed "s|/usr/local/bin/trove|$trove|" deploy/systemd/trove.service > "$scratch/trove.service"
out="$(systemd-analyze verify "$scratch/trove.service" 2>&1)" || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then echo "$out" >&2; exit 1; fi

echo "--- compose, Grafana provisioning and Dockerfile references"
python3 - <<'PY'
import json, os, re, yaml
def load(p):
    with open(p) as f:
        return yaml.safe_load(f)
c = load("deploy/compose.yaml")
assert set(c["services"]) == {"trove", "prometheus", "grafana"}, c["services"].keys()
for name, svc in c["services"].items():
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            p = os.path.normpath(os.path.join("deploy", src))
            assert os.path.exists(p), f"{name} mounts {src}: {p} does not exist"
b = c["services"]["trove"]["build"]
ctx = os.path.normpath(os.path.join("deploy", b["context"]))
assert os.path.exists(os.path.join(ctx, b["dockerfile"])), b
# The prometheus config's target is the compose service and its port.
p = load("deploy/prometheus/prometheus.yml")
target = p["scrape_configs"][0]["static_configs"][0]["targets"][0]
host, port = target.split(":")
assert host in c["services"] and f"{port}:{port}" in c["services"]["trove"]["ports"], target
ds = load("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090", ds
dash = load("deploy/grafana/provisioning/dashboards/trove.yml")["providers"][0]
mounted = [v for v in c["services"]["grafana"]["volumes"] if v.endswith(dash["options"]["path"] + "/trove.json:ro")]
assert mounted, (dash, c["services"]["grafana"]["volumes"])
json.load(open("deploy/grafana/trove.json"))
# Every COPY source in the Dockerfile exists in the build context.
for line in open("deploy/Dockerfile"):
    m = re.match(r"COPY\s+(?!--from)(\S+)\s", line)
    if m and m.group(1) != ".":
        assert os.path.exists(os.path.join(ctx, m.group(1))), line
print("compose, provisioning, Dockerfile: references ok")
PY

echo "--- a real Prometheus scraping a real trove serve"
ports="$(python3 -c 'import socket
s=[socket.socket() for _ in range(4)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')"
read -r tcp ws control prom <<<"$ports"
"$trove" serve --data "$scratch/data" --tcp "127.0.0.1:$tcp" --ws "127.0.0.1:$ws" \
    --control "127.0.0.1:$control" > "$scratch/serve.log" 2>&1 &
pids+=($!)
disown
mkdir -p "$scratch/prom"
cp deploy/prometheus/rules.yml "$scratch/prom/"
sed -e "s|trove:7480|127.0.0.1:$control|" -e "s|scrape_interval: 5s|scrape_interval: 1s|" \
    -e "s|evaluation_interval: 5s|evaluation_interval: 1s|" \
    deploy/prometheus/prometheus.yml > "$scratch/prom/prometheus.yml"
grep -q "127.0.0.1:$control" "$scratch/prom/prometheus.yml"
prometheus --config.file="$scratch/prom/prometheus.yml" --storage.tsdb.path="$scratch/prom/data" \
    --web.listen-address="127.0.0.1:$prom" > "$scratch/prom.log" 2>&1 &
pids+=($!)
disown
python3 - "$prom" <<'PY' || { tail -n 20 "$scratch/serve.log" "$scratch/prom.log" >&2; exit 1; }
import json, sys, time, urllib.parse, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/api/v1/"
def get(path, **q):
    url = base + path + ("?" + urllib.parse.urlencode(q) if q else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]
deadline = time.time() + 60
last = None
while time.time() < deadline:
    try:
        up = get("query", query='up{job="trove"}')["result"]
        received = get("query", query='trove_events_received_total{job="trove"}')["result"]
        groups = get("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        last = (up, received, [(r["name"], r.get("health")) for r in rules])
        if up and up[0]["value"][1] == "1" and received and len(rules) == 5 \
                and all(r.get("health") == "ok" for r in rules):
            print("prometheus scraped trove; rules evaluated:", ", ".join(r["name"] for r in rules))
            sys.exit(0)
    except OSError as e:
        last = repr(e)
    time.sleep(0.5)
sys.exit(f"prometheus did not scrape trove with the shipped config within 60 s: {last}")
PY
