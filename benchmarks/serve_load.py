"""Load on `tinygpt serve`: concurrent streaming clients on loopback, batched or not.

    python benchmarks/serve_load.py RUN_DIR [--max-batch 1 16] [--clients 1 4 16 32]
                                    [--requests 64] [--max-tokens 100] [--queue 32]
                                    [--stream-interval 1]

For each `--max-batch` (1: each request decoded alone, the path before batching) it starts
the server as its own process (the command users run), then for each number of clients
sends `--requests` streaming completions (each client one at a time, in turn, over a
connection it keeps open, as an SDK's client does) and prints
requests/s, generated tokens/s, time to first token and total latency (p50, p99), the
number of 429 answers, and /health's latency polled every 50 ms during the run. The
server's resident memory is read before its first run and after its last (/proc, Linux).
The last lines compare each batched server's tokens/s with the first server's.
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


def one_request(http: httpx.Client, url: str, max_tokens: int, seed: int) -> dict:
    body = {
        "prompt": "ROMEO:",
        "max_tokens": max_tokens,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, tokens = None, 0
    with http.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
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


def load(url: str, clients: int, requests: int, max_tokens: int) -> float:
    results: list[dict] = []
    health: list[float] = []
    done = threading.Event()
    counter = iter(range(requests))
    lock = threading.Lock()

    def client(http: httpx.Client) -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            results.append(one_request(http, url, max_tokens, seed=n))

    def poll_health(http: httpx.Client) -> None:
        while not done.is_set():
            start = time.perf_counter()
            http.get(f"{url}/health")
            health.append(time.perf_counter() - start)
            time.sleep(0.05)

    # each client keeps its connection open between requests, as an SDK's client does
    connections = [httpx.Client() for _ in range(clients + 1)]
    poller = threading.Thread(target=poll_health, args=(connections[-1],))
    poller.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(http,)) for http in connections[:-1]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    done.set()
    poller.join()
    for http in connections:
        http.close()
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
        f"max {max(health) * 1000:.1f} ms; server's first token p50 "
        f"{httpx.get(f'{url}/metrics').json()['first_token_ms_p50']:.1f} ms",
        flush=True,
    )
    return tokens / elapsed


def serve(
    run_dir: Path, max_batch: int, queue: int, stream_interval: int
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tinygpt", "serve", str(run_dir), "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--queue", str(queue), "--quiet"]
    command += ["--stream-interval", str(stream_interval)]
    server = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/health")
            return server, url
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--queue", type=int, default=32)
    parser.add_argument("--stream-interval", type=int, default=1, help="the servers' own")
    args = parser.parse_args()
    print(f"cpu: {cpu_description()}; queue {args.queue}; stream interval "
          f"{args.stream_interval}; {args.requests} requests of {args.max_tokens} tokens "
          "per line")  # fmt: skip
    rates: dict[int, list[float]] = {}
    for max_batch in args.max_batch:
        server, url = serve(args.run_dir, max_batch, args.queue, args.stream_interval)
        try:
            print(f"--max-batch {max_batch}")
            with httpx.Client() as http:
                one_request(http, url, args.max_tokens, seed=0)  # warm-up
            before = rss_mb(server.pid)
            rates[max_batch] = [
                load(url, clients, args.requests, args.max_tokens) for clients in args.clients
            ]
            after = rss_mb(server.pid)
            print(f"server memory: {before:.0f} MB before, {after:.0f} MB after", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=10)
    first, *others = args.max_batch
    for max_batch in others:
        ratios = [f"{c} clients {b / a:.2f}x" for c, a, b in
                  zip(args.clients, rates[first], rates[max_batch], strict=True)]  # fmt: skip
        print(f"tokens/s of --max-batch {max_batch} over {first}: {', '.join(ratios)}")


if __name__ == "__main__":
    main()
