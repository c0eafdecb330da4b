"""Honest speed and memory measurements: two variants timed in the same process, interleaved.

Timings on a shared machine drift; interleaving the baseline and the candidate and taking medians makes their
ratio trustworthy even when the absolute numbers are not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from .merge import timed_steps


def resolve_device(name: str | None) -> torch.device:
    """The device a command runs on: ``name`` ("cpu", "cuda", "cuda:N"), or CUDA when available and None.

    A device this machine lacks is refused here, before any work, naming it.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: this torch build or machine has no CUDA device; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: only {torch.cuda.device_count()} CUDA devices are visible")
    elif device.type != "cpu":
        raise ValueError(f"--device {name!r} is not supported; expected cpu, cuda or cuda:N")
    return device


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on an accelerator, so wall-clock time covers it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    calls: Sequence[Callable[[], object]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    device: torch.device | str = "cpu",
    desc: str | None = None,
) -> list[float]:
    """Median seconds per call of each function, measured round-robin after ``warmup`` rounds."""
    rounds = time_rounds(calls, warmup=warmup, repeats=repeats, device=device, desc=desc)
    return [statistics.median(record) for record in rounds]


def time_rounds(
    calls: Sequence[Callable[[], object]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    device: torch.device | str = "cpu",
    desc: str | None = None,
) -> list[list[float]]:
    """Seconds of every timed call of each function, round-robin after ``warmup`` rounds: ``repeats`` per function,
    round i of every function measured back to back (so ratios taken round by round share the machine's load)."""
    times: list[list[float]] = [[] for _ in calls]
    rounds = tqdm(range(warmup + repeats), desc=desc, disable=desc is None, leave=False)
    for round_index in rounds:
        for call, record in zip(calls, times):
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            if round_index >= warmup:
                record.append(time.perf_counter() - start)
    return times


def peak_memory_mb(call: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Peak memory that torch allocates during ``call``, above what was allocated before it, in MiB.

    CUDA reads the caching allocator's statistics; on the CPU, which keeps none, the profiler's allocation
    records are summed in time order.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    current = peak = 0
    events = sorted(prof.profiler.kineto_results.events(), key=lambda event: event.start_ns())
    for event in events:
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU:
            current += event.nbytes()
            peak = max(peak, current)
    return peak / 2**20


def seconds_in_steps(call: Callable[[], object], repeats: int = 3) -> tuple[float, float]:
    """Seconds ``call`` spends inside videotome's reduction steps (:func:`videotome.merge.timed_steps`), and in all:
    the medians over ``repeats`` calls. CPU only: on a GPU the steps' work is queued, not done, when they return."""
    inside, total = [], []
    for _ in range(repeats):
        with timed_steps() as steps:
            start = time.perf_counter()
            call()
            total.append(time.perf_counter() - start)
        inside.append(sum(steps))
    return statistics.median(inside), statistics.median(total)
