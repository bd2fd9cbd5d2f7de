"""Load test of the OpenAI-compatible server (``python -m paddlemix_qwen25vl.serve``), loopback only.

Starts the server on a free 127.0.0.1 port with the quick benchmark model (3B widths, 4 decoder
layers, random weights: answers run to max_tokens, so decoding dominates) or the demo model,
or targets a running server (``--url``, loopback only). For 1, 2, 4 and 8 concurrent clients,
each client sends streamed requests one after another (a bounded count and time per level),
a share of them malformed (each must get a 4xx). Reports requests/s, output tokens/s, latency
and time to first token (p50/p95) per level, and the 8-client / 1-client tokens/s ratio.
A quarter of the requests carry the demo image, the same one each time: with the server's
vision cache (its default) the vision tower encodes it once per server, as it would a
conversation's image turn after turn; ``--vision_cache_mb 0`` encodes it in every request.

``--soak``: 500 requests from 8 clients, 10 % malformed: the server must not crash, every
well-formed answer must equal the answer its request gets alone, and the server's RSS may
grow by less than 5 % after the warm-up.

Prints and saves benchmarks/results/serve_load.json (+ serve_load.png when matplotlib is there).

Usage: python benchmarks/serve_load.py [--model quick|demo] [--clients 1,2,4,8] [--soak]
       python benchmarks/serve_load.py --model demo --clients "" --soak --output benchmarks/results/serve_load_soak.json
"""
from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.checkpoints import DEFAULT_CACHE, ensure_checkpoint  # noqa: E402
from harness.common import REPO, RESULTS_DIR, worker_env  # noqa: E402

MODEL = "bench"
DEMO_IMAGE = REPO / "examples" / "assets" / "demo_image.png"
PROMPTS = ["Tell me a story.", "What is the capital of France?", "Count to twenty.", "Describe a sunset.",
           "Write a haiku about rain.", "Explain gravity simply.", "List three fruits.", "Say hello in Spanish."]
# Malformed requests (body bytes, expected status) mixed into the load.
BAD_BODIES = [
    (b'{"model": "bench", "messages": [', 400),
    (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": 5}]}).encode(), 400),
    (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}}]}]}).encode(), 400),
    (json.dumps({"model": MODEL, "max_tokens": "many", "messages": [{"role": "user", "content": "hi"}]}).encode(), 400),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, threads: int, max_batch_size: int, dtype: str,
                 vision_cache_mb: int) -> Tuple[subprocess.Popen, str]:
    """The server in its own process (its RSS is measured alone); returns it and its URL once healthy."""
    port = _free_port()
    cmd = [sys.executable, "-m", "paddlemix_qwen25vl.serve", "--port", str(port), "--served_model_name", MODEL,
           "--dtype", dtype, "--max_batch_size", str(max_batch_size), "--vision_cache_mb", str(vision_cache_mb),
           "--log_level", "warning"]
    if model == "quick":
        cmd += ["--model_path", str(ensure_checkpoint("quick", DEFAULT_CACHE))]
    server = subprocess.Popen(cmd, env=worker_env(threads, sys.executable))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode} while loading")
        try:
            if _get(url, "/health")[0] == 200:
                return server, url
        except OSError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("the server did not become healthy within 600 s")


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlparse(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"--url must be a loopback address, got {url}")
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)


def _get(url: str, path: str) -> Tuple[int, bytes]:
    connection = _connection(url)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def good_body(index: int, max_tokens: int, with_image: bool) -> bytes:
    """Well-formed streamed request number ``index`` (prompts cycle; some carry the demo image)."""
    content: Any = PROMPTS[index % len(PROMPTS)]
    if with_image:
        import base64

        url = "data:image/png;base64," + base64.b64encode(DEMO_IMAGE.read_bytes()).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": content}]
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0,
                       "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}).encode()


def send(url: str, body: bytes) -> Dict[str, Any]:
    """One POST; a 200 is read as SSE: text, output tokens, latency, time to first token."""
    start = time.perf_counter()
    connection = _connection(url)
    try:
        connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            response.read()
            return {"status": response.status, "latency": time.perf_counter() - start}
        text, tokens, first = "", 0, None
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                return {"status": 500, "latency": time.perf_counter() - start, "error": chunk["error"]["message"]}
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter() - start
                text += chunk["choices"][0]["delta"]["content"]
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
        return {"status": 200, "text": text, "tokens": tokens, "latency": time.perf_counter() - start, "ttft": first}
    finally:
        connection.close()


def _percentile(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def run_level(url: str, clients: int, requests_per_client: int, max_seconds: float, max_tokens: int,
              bad_share: float, seed: int) -> Dict[str, Any]:
    """``clients`` threads, each sending up to ``requests_per_client`` requests within ``max_seconds``."""
    rng = random.Random(seed)
    plan = [[("bad", rng.randrange(len(BAD_BODIES))) if rng.random() < bad_share else ("good", rng.randrange(10**6))
             for _ in range(requests_per_client)] for _ in range(clients)]
    deadline = time.perf_counter() + max_seconds

    def client(jobs: List[Tuple[str, int]]) -> List[Dict[str, Any]]:
        results = []
        for kind, index in jobs:
            if time.perf_counter() > deadline:
                break
            if kind == "bad":
                body, expected = BAD_BODIES[index]
                results.append({**send(url, body), "bad": True, "expected": expected})
            else:
                results.append({**send(url, good_body(index, max_tokens, with_image=index % 4 == 0)), "bad": False})
        return results

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for batch in pool.map(client, plan) for r in batch]
    wall = time.perf_counter() - start
    good = [r for r in results if not r["bad"] and r["status"] == 200]
    bad = [r for r in results if r["bad"]]
    return {
        "clients": clients,
        "wall_seconds": round(wall, 3),
        "requests": len(results),
        "answered": len(good),
        "failed": sum(not r["bad"] and r["status"] != 200 for r in results),
        "bad_requests": len(bad),
        "bad_refused_as_expected": sum(r["status"] == r["expected"] for r in bad),
        "requests_per_second": round(len(good) / wall, 3),
        "output_tokens_per_second": round(sum(r["tokens"] for r in good) / wall, 3),
        "latency_p50_s": _percentile([r["latency"] for r in good], 0.5),
        "latency_p95_s": _percentile([r["latency"] for r in good], 0.95),
        "ttft_p50_s": _percentile([r["ttft"] for r in good if r["ttft"]], 0.5),
        "ttft_p95_s": _percentile([r["ttft"] for r in good if r["ttft"]], 0.95),
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError(f"VmRSS of process {pid}")


def soak(url: str, pid: Optional[int], total: int, clients: int, max_tokens: int, bad_share: float,
         warmup: int, seed: int) -> Dict[str, Any]:
    """``total`` requests from ``clients`` threads, ``bad_share`` malformed; answers checked against lone ones."""
    from tqdm import tqdm

    variants = [(i, i % 4 == 0) for i in range(len(PROMPTS))]
    lone = {v: send(url, good_body(v[0], max_tokens, v[1])) for v in variants}  # each alone, one at a time
    rng = random.Random(seed)
    jobs = [("bad", rng.randrange(len(BAD_BODIES))) if rng.random() < bad_share else ("good", rng.randrange(len(variants)))
            for _ in range(total)]
    mismatches, refused_ok, rss = 0, 0, {}

    def one(job: Tuple[str, int]) -> Tuple[str, bool]:
        kind, index = job
        if kind == "bad":
            body, expected = BAD_BODIES[index]
            return kind, send(url, body)["status"] == expected
        variant = variants[index]
        result = send(url, good_body(variant[0], max_tokens, variant[1]))
        return kind, result["status"] == 200 and result["text"] == lone[variant]["text"]

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for done, (kind, ok) in enumerate(tqdm(pool.map(one, jobs), total=total, desc="soak", unit="req"), 1):
            if kind == "bad":
                refused_ok += ok
            elif not ok:
                mismatches += 1
            if pid and done in (warmup, total):
                rss[done] = rss_kib(pid)
    alive = _get(url, "/health")[0] == 200
    growth = (rss[total] - rss[warmup]) / rss[warmup] if pid else None
    bad_total = sum(kind == "bad" for kind, _ in jobs)
    return {
        "requests": total, "clients": clients, "malformed": bad_total, "malformed_refused_as_expected": refused_ok,
        "well_formed": total - bad_total, "well_formed_not_equal_to_lone_or_failed": mismatches,
        "server_alive_after": alive, "rss_kib_after_warmup": rss.get(warmup), "rss_kib_at_end": rss.get(total),
        "rss_growth_after_warmup": None if growth is None else round(growth, 4),
        "passed": alive and mismatches == 0 and refused_ok == bad_total and (growth is None or growth < 0.05),
    }


def plot(levels: List[Dict[str, Any]], path: Path) -> Optional[str]:
    """tokens/s and latency against clients; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    clients = [lv["clients"] for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(clients, [lv["output_tokens_per_second"] for lv in levels], "o-")
    left.set(xlabel="concurrent clients", ylabel="output tokens/s (all clients)", xticks=clients)
    right.plot(clients, [lv["latency_p50_s"] for lv in levels], "o-", label="latency p50")
    right.plot(clients, [lv["latency_p95_s"] for lv in levels], "o--", label="latency p95")
    right.plot(clients, [lv["ttft_p50_s"] for lv in levels], "s-", label="first token p50")
    right.set(xlabel="concurrent clients", ylabel="seconds", xticks=clients)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="quick", choices=["quick", "demo"])
    parser.add_argument("--url", default=None, help="a running loopback server instead (served as model 'bench')")
    parser.add_argument("--threads", type=int, default=2, help="the server's CPU threads")
    parser.add_argument("--max_batch_size", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                        help="the server's --dtype (its default, bfloat16: bfloat16 weights read by the custom kernels "
                             "for up to 256 rows; float32 batches go through MKL's small-M GEMM)")
    parser.add_argument("--vision_cache_mb", type=int, default=256,
                        help="the server's vision cache (its default; 0: every image prompt runs the vision tower)")
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--requests_per_client", type=int, default=6)
    parser.add_argument("--max_seconds", type=float, default=240, help="per level")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--bad_share", type=float, default=0.1)
    parser.add_argument("--soak", action="store_true", help="also run the soak test")
    parser.add_argument("--soak_requests", type=int, default=500)
    parser.add_argument("--soak_max_tokens", type=int, default=16)
    parser.add_argument("--output", default=str(RESULTS_DIR / "serve_load.json"))
    args = parser.parse_args()

    from paddlemix_qwen25vl.cpu import cpu_description

    load_average_start = os.getloadavg()  # the machine may be shared: its load, 1/5/15 min
    server, url = (None, args.url) if args.url else start_server(args.model, args.threads, args.max_batch_size, args.dtype,
                                                                    args.vision_cache_mb)
    try:
        send(url, good_body(0, 4, with_image=True))  # warm-up
        levels = []
        for i, clients in enumerate(int(c) for c in args.clients.split(",") if c):
            levels.append(run_level(url, clients, args.requests_per_client, args.max_seconds, args.max_tokens,
                                    args.bad_share, seed=i))
            print(json.dumps(levels[-1]), flush=True)
        by_clients = {lv["clients"]: lv["output_tokens_per_second"] for lv in levels}
        report = {
            "model": args.url or args.model, "server_threads": args.threads, "server_dtype": args.dtype, "max_batch_size": args.max_batch_size,
            "vision_cache_mb": None if args.url else args.vision_cache_mb,
            "max_tokens": args.max_tokens, "bad_share": args.bad_share,
            # the server process sets its own MKL code path when it loads the model
            "cpu": {k: v for k, v in cpu_description().items() if k != "mkl_code_path"},
            "load_average": {"start": load_average_start, "end": os.getloadavg()},
            "levels": levels,
            "tokens_per_second_8_vs_1": round(by_clients[8] / by_clients[1], 3) if {1, 8} <= set(by_clients) else None,
        }
        if args.soak:
            report["soak"] = soak(url, server.pid if server else None, args.soak_requests, 8, args.soak_max_tokens,
                                  0.1, warmup=50, seed=0)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report["plot"] = plot(levels, output.with_suffix(".png")) if levels else None
    output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
