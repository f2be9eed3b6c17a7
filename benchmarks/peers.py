"""What the RoI benchmarks share: their command line, the machine line, interleaved medians of seglab and its
peer, and the extra peak memory of one call measured in a fresh process (``--memory-worker``)."""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
import torchvision

from seglab.engine.benchmark import cpu_name


def arguments(doc: str, add=None) -> argparse.Namespace:
    """``--repeats``, ``--threads`` (applied here), the hidden ``--memory-worker SPEC`` and what ``add(parser)``
    adds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    if add is not None:
        add(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def machine(threads: int) -> str:
    return (f"CPU {cpu_name()}, {threads} torch threads; torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}")


def interleaved_medians(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each call over ``repeats`` rounds of one call each, after one warm-up call each."""
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_extra_mib(script: str, spec: list) -> float:
    """The MiB that ``script --memory-worker SPEC`` reports (:func:`report_peak`), in a fresh process."""
    out = subprocess.run([sys.executable, script, "--memory-worker", json.dumps(spec)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_mib"]


def report_peak(call: Callable[[], object]) -> None:
    """Print as JSON the peak resident memory (VmHWM, MiB) ``call`` reaches above the resident size before it."""

    def mib(field: str) -> float:
        line = next(l for l in open("/proc/self/status") if l.startswith(field))
        return int(line.split()[1]) / 1024

    before = mib("VmRSS:")
    call()
    print(json.dumps({"extra_mib": mib("VmHWM:") - before}))
