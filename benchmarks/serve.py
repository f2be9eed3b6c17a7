"""``seglab serve`` against calling the model in-process: throughput and latency at several client concurrencies.

One small semantic model (FCN-ResNet50 at width 0.25, random weights, 5 classes) answers the same PNG scenes
two ways, each in its own process so that their peak memory compares:

- **server**: ``seglab serve --checkpoint ... --threads T`` on a loopback port; C client threads (httpx) each
  send ``POST /predict?format=png`` one after another (a closed loop);
- **in-process**: a worker process that loaded the same checkpoint runs the same per-image work (decode, model,
  palette PNG: ``seglab.serve.answers.answer``) for C caller threads on a pool of T threads (as the server's).

The ratio is in-process throughput / server throughput: the cost of HTTP, multipart parsing and the pool.
Rounds are interleaved (server, in-process, server, ...) after a warm-up; requests/s is the median over the
rounds, p50/p95 latencies are over every request of every round. Peak memory is each process's VmHWM (peak
resident set), read from /proc. The clients share the CPU with the server: on a 2-core machine they cost it
part of its throughput (the in-process callers cost nothing comparable).

    python benchmarks/serve.py [--size 256] [--requests 32] [--rounds 5] [--threads 2] [--concurrency 1 4 16]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from PIL import Image

import seglab
from seglab.data import Shapes
from seglab.engine.benchmark import cpu_name
from seglab.export import to_safetensors

MODEL, WIDTH_MULT = "fcn_resnet50", 0.25
NUM_IMAGES = 8


def scenes(size: int) -> list[bytes]:
    """PNG bytes of ``NUM_IMAGES`` Shapes scenes of ``size`` × ``size`` pixels."""
    dataset = Shapes("test", NUM_IMAGES, image_size=size)
    out = []
    for index in range(NUM_IMAGES):
        buffer = io.BytesIO()
        Image.fromarray(dataset[index][0].permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def peak_rss_mib(pid: int | str = "self") -> float:
    """VmHWM (peak resident set) of process ``pid`` in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def closed_loop(call, concurrency: int, requests: int) -> tuple[float, list[float]]:
    """``requests`` calls of ``call(i)`` by ``concurrency`` threads, each waiting for its answer before the next:
    (wall seconds, per-call latencies in seconds)."""
    latencies, lock, counter = [], threading.Lock(), iter(range(requests))

    def caller():
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            start = time.perf_counter()
            call(index)
            with lock:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as callers:
        for future in [callers.submit(caller) for _ in range(concurrency)]:
            future.result()
    return time.perf_counter() - start, latencies


def in_process_worker(checkpoint: str, size: int, threads: int) -> None:
    """The in-process side: reads ``{"concurrency", "requests"}`` lines on stdin, answers each with a JSON line of
    (seconds, latencies); an empty line ends it with its peak RSS."""
    from seglab.serve.answers import answer

    torch.set_num_threads(max(1, torch.get_num_threads() // threads))  # as ``seglab serve`` shares the cores
    model = seglab.models.load(checkpoint).eval()
    images, pool = scenes(size), ThreadPoolExecutor(threads)  # the server's pool: ``threads`` workers, FIFO queue

    def call(index: int) -> None:
        pool.submit(answer, model, "semantic", images[index % len(images)], max_pixels=40_000_000,
                    score_threshold=None).result()

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        job = json.loads(line)
        seconds, latencies = closed_loop(call, job["concurrency"], job["requests"])
        print(json.dumps({"seconds": seconds, "latencies": latencies}), flush=True)
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}), flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(checkpoint: str, threads: int, queue: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "seglab", "serve", "--checkpoint", checkpoint, "--port",
                                str(port), "--threads", str(threads), "--max-queue", str(queue)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("seglab serve did not start")


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default: 256)")
    parser.add_argument("--requests", type=int, default=32, help="requests per round (default: 32)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per concurrency (default: 5)")
    parser.add_argument("--threads", type=int, default=2, help="server --threads (default: 2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return in_process_worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))

    folder = Path(tempfile.mkdtemp(prefix="seglab-serve-bench-"))
    torch.manual_seed(0)
    model = seglab.models.create(MODEL, len(Shapes.classes), width_mult=WIDTH_MULT)
    model.meta["classes"] = list(Shapes.classes)
    checkpoint = str(to_safetensors(model, folder / "model.safetensors"))
    images = scenes(args.size)
    server, url = start_server(checkpoint, args.threads, max(args.concurrency))
    worker = subprocess.Popen([sys.executable, __file__, "--worker", checkpoint, str(args.size), str(args.threads)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert json.loads(worker.stdout.readline())["ready"]
    local = threading.local()

    def post(index: int) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        response = local.client.post("/predict", params={"format": "png"},
                                     files={"image": ("scene.png", images[index % len(images)], "image/png")})
        response.raise_for_status()

    def in_process(concurrency: int, requests: int) -> tuple[float, list[float]]:
        worker.stdin.write(json.dumps({"concurrency": concurrency, "requests": requests}) + "\n")
        worker.stdin.flush()
        result = json.loads(worker.stdout.readline())
        return result["seconds"], result["latencies"]

    rows = []
    try:
        for concurrency in args.concurrency:
            closed_loop(post, concurrency, concurrency * 2)  # warm-up: connections, threads, allocator
            in_process(concurrency, concurrency * 2)
            rates, latencies = {"server": [], "in-process": []}, {"server": [], "in-process": []}
            for _ in range(args.rounds):
                for side, measure in (("server", lambda c, n: closed_loop(post, c, n)), ("in-process", in_process)):
                    seconds, waits = measure(concurrency, args.requests)
                    rates[side].append(args.requests / seconds)
                    latencies[side] += waits
            rows.append((concurrency, {side: (statistics.median(rates[side]), percentile(latencies[side], 50),
                                              percentile(latencies[side], 95)) for side in rates}))
        server_rss = peak_rss_mib(server.pid)
        worker.stdin.write("\n")
        worker.stdin.flush()
        worker_rss = json.loads(worker.stdout.readline())["peak_rss_mib"]
    finally:
        server.terminate()
        server.wait(10)
        worker.kill()
        shutil.rmtree(folder, ignore_errors=True)

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
          f"torch threads; torch {torch.__version__}, device cpu; {MODEL} width {WIDTH_MULT}, random weights, "
          f"{args.size}×{args.size} PNG scenes; server --threads {args.threads}; {args.requests} requests per round, "
          f"median of {args.rounds} rounds after a warm-up\n")
    print("| clients | server req/s | server p50 / p95 (ms) | in-process req/s | in-process p50 / p95 (ms) | "
          "ratio (in-process / server req/s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for concurrency, result in rows:
        (s_rate, s50, s95), (i_rate, i50, i95) = result["server"], result["in-process"]
        print(f"| {concurrency} | {s_rate:.1f} | {1000 * s50:.0f} / {1000 * s95:.0f} | {i_rate:.1f} | "
              f"{1000 * i50:.0f} / {1000 * i95:.0f} | {i_rate / s_rate:.2f} |")
    print(f"\npeak RSS: server process {server_rss:.0f} MiB, in-process worker {worker_rss:.0f} MiB")


if __name__ == "__main__":
    main()
