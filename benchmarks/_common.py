"""Shared helpers for the side-by-side benchmarks: timing and result files."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def time_call(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time (s) of ``fn()``; ``fn`` must block until its result is ready."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def interleaved_runs(
    fns: dict[str, Callable[[], object]], repeats: int = 10, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall times (s) of every run of several blocking callables, run round-robin.

    Interleaving exposes every contender to the same background load, so the times of one
    round can be compared pairwise (:func:`paired_ratio`) on a shared, noisy machine.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int = 10, warmup: int = 2
) -> dict[str, float]:
    """Median wall times (s) of several blocking callables, run round-robin
    (:func:`interleaved_runs`)."""
    runs = interleaved_runs(fns, repeats, warmup)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in runs.items()}


def paired_ratio(numerator, denominator, scale: float = 1.0) -> dict:
    """Spread of a speed-up measured in rounds: ``scale * numerator[r] / denominator[r]``
    for each round ``r`` (both timed in the same round, under the same load); its median,
    min and max and the number of rounds."""
    import numpy as np

    r = scale * np.asarray(numerator, dtype=float) / np.asarray(denominator, dtype=float)
    return {
        "median": float(np.median(r)),
        "min": float(r.min()),
        "max": float(r.max()),
        "n": r.size,
    }


def machine() -> dict:
    import os

    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path
