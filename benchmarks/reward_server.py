"""Reward server under load: dynamic batching vs one request at a time (``--max-batch 1``), same run, same load.

Each mode starts ``rlkit serve-reward`` in its own process on a free 127.0.0.1 port, then ``--clients``
threads each send ``--requests`` requests (1-3 responses each, from ``rlkit.testing.arithmetic_requests``)
through the ``remote`` reward client, all at once. Every answer is compared with the in-process score of the
same request (arithmetic: exactly; a PRM: within 1e-5, since a batch of another shape rounds fp32 sums
differently; beyond that: exit code 1). Printed per mode: wall time, throughput, p50/p99 client latency,
and the server's batch count; then the ratios dynamic / one-at-a-time.

The default reward is the rule-based ``arithmetic`` checker (scoring costs microseconds, so the numbers are
the HTTP path's own). ``--prm`` serves a random tiny ``qwen-prm`` instead (a Qwen2 token classifier of
``--hidden`` x ``--layers``), where batching can also speed up the model's forward.

Usage:
    python benchmarks/reward_server.py [--clients 64] [--requests 50] [--max-batch 64] [--max-wait-ms 5]
                                       [--prm [--hidden 64 --layers 2]]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOLERANCE = 1e-5
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from reward.models.remote import RemoteReward  # noqa: E402
from reward.registry import build_reward  # noqa: E402
from rlkit.testing import arithmetic_requests  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(reward: str, reward_args: dict, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "rlkit.cli", "serve-reward", "--reward", reward, "--reward-args",
           json.dumps(reward_args), "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms",
           str(max_wait_ms), "--max-queue", "100000", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            requests.get(url + "/health", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("server did not start in 120 s")


def score_diffs(got: list, expected: list) -> list[float]:
    """|got - expected| for every step score; inf for each request or response whose shape differs."""
    out = [float("inf")] * abs(len(got) - len(expected))
    for g, e in zip(got, expected):
        if len(g) != len(e):
            out.append(float("inf"))
            continue
        for gr, er in zip(g, e):
            out += [abs(a - b) for a, b in zip(gr, er)] if len(gr) == len(er) else [float("inf")]
    return out


def run_mode(label: str, args, reward: str, reward_args: dict, reqs: list[dict], expected: list, max_batch: int) -> dict:
    proc, url = start_server(reward, reward_args, max_batch, args.max_wait_ms)
    latencies: list[float] = []
    try:
        def client(c: int) -> list:
            rc = RemoteReward(url + "/score", timeout=300, retries=0)
            out = []
            for r in reqs[c * args.requests:(c + 1) * args.requests]:
                t = time.perf_counter()
                out.append([s.scores for s in rc.score(r["prompts"], r["responses"])])
                latencies.append(time.perf_counter() - t)
            return out

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            got = [x for part in pool.map(client, range(args.clients)) for x in part]
        wall = time.perf_counter() - t0
        health = requests.get(url + "/health", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(60)
    diffs = score_diffs(got, expected)
    lat = sorted(latencies)
    return {"label": label, "wall": wall, "rps": len(reqs) / wall, "p50": statistics.median(lat) * 1000,
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, "batches": health["batches"],
            "responses": health["responses"], "max_diff": max(diffs, default=0.0),
            "wrong": sum(d > TOLERANCE for d in diffs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--prm", action="store_true", help="serve a random tiny qwen-prm instead of arithmetic")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    args = p.parse_args()

    reqs = arithmetic_requests(args.clients * args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        if args.prm:
            from rlkit import testing

            tok = testing.tiny_tokenizer()
            model = testing.tiny_token_classifier(tok, hidden_size=args.hidden, num_hidden_layers=args.layers,
                                                  intermediate_size=4 * args.hidden, max_position_embeddings=2048)
            reward, reward_args = "qwen-prm", {"model": testing.save_tiny(model, tok, Path(tmp) / "prm"),
                                               "device": "cpu"}
        else:
            reward, reward_args = "arithmetic", {}
        rm = build_reward(reward, **reward_args)
        expected = [[s.scores for s in rm.score(r["prompts"], r["responses"])] for r in reqs]
        n_resp = sum(len(r["responses"]) for r in reqs)
        print(f"reward {reward}; {args.clients} clients x {args.requests} requests = {len(reqs)} requests, "
              f"{n_resp} responses; dynamic batching: max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms")
        rows = [run_mode("dynamic", args, reward, reward_args, reqs, expected, args.max_batch),
                run_mode("one-at-a-time", args, reward, reward_args, reqs, expected, 1)]
    print(f"{'mode':<14} {'wall s':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batches':>8} "
          f"{'resp/batch':>10} {'max |diff|':>10}")
    for r in rows:
        print(f"{r['label']:<14} {r['wall']:>7.2f} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
              f"{r['batches']:>8} {r['responses'] / max(r['batches'], 1):>10.2f} {r['max_diff']:>10.2g}")
    d, o = rows
    print(f"ratio dynamic / one-at-a-time: throughput {d['rps'] / o['rps']:.2f}x, p50 {d['p50'] / o['p50']:.2f}x, "
          f"p99 {d['p99'] / o['p99']:.2f}x")
    if any(r["wrong"] for r in rows):
        print(f"ERROR: {sum(r['wrong'] for r in rows)} step scores differ from the in-process ones by more than "
              f"{TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
