"""Benchmark helpers: timing with warm-up, machine description, peak memory in a child process."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    cpu = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {n} cores available, {platform.python_version()}"


def best_time(fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _child(target: Callable[[], Any], setup: Callable[[], Any], queue: Any) -> None:
    import gc
    import threading

    arg = setup()
    gc.collect()
    base = _rss_mib()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out = target(arg)
    done.set()
    th.join()
    peak[0] = max(peak[0], _rss_mib())
    del out
    queue.put(peak[0] - base)


def peak_memory_mib(target: Callable[[Any], Any], setup: Callable[[], Any]) -> float:
    """Peak resident-memory growth (MiB) of ``target(setup())`` in a fresh process.

    Sampled from ``/proc/self/statm`` every 2 ms (Linux), so C++ allocations of the competitors
    count as well as numpy's.
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(target, setup, q))
    p.start()
    out = q.get()
    p.join()
    return float(out)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
