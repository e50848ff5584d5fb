"""What every benchmark reports besides its timings: the machine it ran on, and one summary of a
list of repeated measurements (scripts/benchmark.py, the serving benchmark, the GPU check)."""

from __future__ import annotations

import os
import platform
import sys

import numpy as np


def machine() -> dict:
    """The CPU model, core count, load average now, Python and platform."""
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_at_start": os.getloadavg(), "python": sys.version.split()[0],
            "platform": platform.platform()}


def machine_line(info: dict | None = None) -> str:
    """"<cpu model>, <n> cores"."""
    info = info or machine()
    return f"{info['cpu']}, {info['cores']} cores"


def summary(values: list[float]) -> dict:
    """n, mean, std, min, max, median and p10/p50/p90/p99 of `values`, and the run-to-run spread
    (p90 - p10) / median; all zeros for no values."""
    keys = ("mean", "std", "min", "max", "median", "p10", "p50", "p90", "p99", "spread")
    if not values:
        return {**dict.fromkeys(keys, 0.0), "n": 0}
    a = np.asarray(values, dtype=float)
    p10, p50, p90, p99 = (float(np.percentile(a, q)) for q in (10, 50, 90, 99))
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()),
            "median": p50, "p10": p10, "p50": p50, "p90": p90, "p99": p99,
            "spread": (p90 - p10) / p50 if p50 else 0.0, "n": int(a.size)}
