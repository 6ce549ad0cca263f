#!/usr/bin/env python3
"""Measures the control plane's /health and /metrics latency while the data
plane is loaded: polls each endpoint at a steady rate over one keep-alive
connection per endpoint and prints percentiles as JSON.

usage: control-latency.py HOST:PORT SECONDS [RATE_PER_S]
"""
import http.client
import json
import sys
import threading
import time


def poll(addr, path, seconds, rate, out):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    period = 1.0 / rate
    start = time.monotonic()
    next_at = start
    while time.monotonic() - start < seconds:
        # Open loop: latency counts from the intended send time.
        intended = next_at
        now = time.monotonic()
        if now < intended:
            time.sleep(intended - now)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        done = time.monotonic()
        if resp.status != 200 or not body:
            out.setdefault("errors", 0)
            out["errors"] += 1
        out.setdefault("lat", []).append(done - intended)
        next_at += period


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def main():
    addr, seconds = sys.argv[1], float(sys.argv[2])
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    results = {"/health": {}, "/metrics": {}}
    threads = [threading.Thread(target=poll, args=(addr, p, seconds, rate, r)) for p, r in results.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = {}
    for path, r in results.items():
        lat = r.get("lat", [])
        report[path] = {
            "requests": len(lat),
            "errors": r.get("errors", 0),
            "p50_ms": round(pct(lat, 0.50) * 1e3, 2),
            "p99_ms": round(pct(lat, 0.99) * 1e3, 2),
            "max_ms": round(max(lat) * 1e3, 2),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
