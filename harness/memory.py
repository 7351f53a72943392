"""Peak memory of a run (or of a benchmark's timed steps): the CPU's resident set, and CUDA's allocator."""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def reset_peak_memory() -> str:
    """Starts a new peak-memory window for this run; returns the scope the CPU number will have."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM), so that several runs in one
        # process (a reproduction) each report their own peak rather than the largest so far.
        Path("/proc/self/clear_refs").write_text("5")
        return "run"
    except OSError:
        return "process"


def peak_memory(scope: str) -> dict:
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if scope == "run":
        status = Path("/proc/self/status").read_text()
        peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    peak = {"cpu_peak_rss_mb": round(peak_kb / 1024, 1), "cpu_peak_scope": scope}
    if torch.cuda.is_available():
        peak["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak
