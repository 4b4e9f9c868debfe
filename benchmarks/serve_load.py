"""Load on `tinygpt serve`: concurrent streaming clients on loopback.

    python benchmarks/serve_load.py RUN_DIR [--clients 1 4 16] [--requests 32]
                                            [--max-tokens 100] [--slots 2] [--queue 8]

Starts the server as its own process (the command users run), then for each number of
clients sends `--requests` streaming completions (each client one at a time, in turn) and
prints requests/s, generated tokens/s, time to first token and total latency (p50, p99),
the number of 429 answers, and /health's latency polled every 50 ms during the run. The
server's resident memory is read before the first run and after the last (/proc, Linux).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tinygpt.runtime import cpu_description


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
    return int(kb) / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_request(url: str, max_tokens: int, seed: int) -> dict:
    body = {
        "prompt": "ROMEO:",
        "max_tokens": max_tokens,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        if response.status_code == 429:
            return {"rejected": True}
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"ttft": first, "total": time.perf_counter() - start, "tokens": tokens}


def load(url: str, clients: int, requests: int, max_tokens: int) -> None:
    results: list[dict] = []
    health: list[float] = []
    done = threading.Event()
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            results.append(one_request(url, max_tokens, seed=n))

    def poll_health() -> None:
        while not done.is_set():
            start = time.perf_counter()
            httpx.get(f"{url}/health")
            health.append(time.perf_counter() - start)
            time.sleep(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    done.set()
    poller.join()
    served = [r for r in results if not r.get("rejected")]
    rejected = len(results) - len(served)
    tokens = sum(r["tokens"] for r in served)
    ttft = [r["ttft"] * 1000 for r in served]
    total = [r["total"] * 1000 for r in served]
    print(
        f"{clients:>3} clients: {len(served) / elapsed:6.2f} req/s, {tokens / elapsed:7.1f} "
        f"tokens/s; ttft p50 {statistics.median(ttft):6.1f} ms p99 {percentile(ttft, 0.99):6.1f}"
        f" ms; total p50 {statistics.median(total):7.1f} ms p99 {percentile(total, 0.99):7.1f} "
        f"ms; 429s {rejected}; /health p50 {statistics.median(health) * 1000:.1f} ms "
        f"max {max(health) * 1000:.1f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--queue", type=int, default=8)
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tinygpt", "serve", str(args.run_dir), "--port", str(port)]
    command += ["--slots", str(args.slots), "--queue", str(args.queue)]
    server = subprocess.Popen(command, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/health")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        print(f"cpu: {cpu_description()}; slots {args.slots}, queue {args.queue}")
        one_request(url, args.max_tokens, seed=0)  # warm-up
        before = rss_mb(server.pid)
        for clients in args.clients:
            load(url, clients, args.requests, args.max_tokens)
        after = rss_mb(server.pid)
        print(f"server memory: {before:.0f} MB before, {after:.0f} MB after")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
