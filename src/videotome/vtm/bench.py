"""Throughput and peak memory of the VTM network against its unmerged baseline, measured in one process.

Both run on random tokens of the given shape, interleaved round-robin so that load on a shared machine affects them
alike (see :mod:`videotome.measure`): inference (evaluation mode: no auxiliary path, learnable targets by top-k), or
with ``train`` a training step (training mode: the loss of the main and, for the learnable partition, the auxiliary
path, and its backward pass), as the paper's Table 9 compares training and inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from videotome.measure import peak_memory_mb, resolve_device, time_interleaved
from videotome.options import device_option
from videotome.vtm.model import ATTENTION_KERNELS, VideoTokenMerger, VTMConfig, vtm_loss
from videotome.vtm.partition import PARTITIONS

LVU_SHAPE = (60, 197, 1024)
LVU_WINDOWS = (6, 30, 60)


def bench_config(partition: str | None, gamma: float, shape: tuple[int, int, int], windows: tuple[int, ...],
                 attention: str) -> VTMConfig:
    """The benchmark's architecture, checked against the token shape; ``partition`` None is the unmerged baseline."""
    config = VTMConfig(
        in_channels=shape[2], num_outputs=10, windows=windows, merge=partition is not None,
        partition=partition or "naive", gamma=gamma, attention=attention,
    )
    config.check_frames(shape[0])
    config.frame_grid(shape[1])
    return config


@dataclass
class VTMBenchConfig:
    """One ``videotome vtm bench``: the VTM settings to time against the unmerged baseline, and how."""

    partition: str = field(
        default="learnable", metadata={"help": "how merge targets are chosen", "choices": PARTITIONS}
    )
    gamma: tuple[float, ...] = field(default=(6.0,), metadata={"help": "one or more partition factors"})
    batch_size: int = field(default=1, metadata={"help": "samples per forward pass"})
    repeats: int = field(default=3, metadata={"help": "timed rounds (median)"})
    warmup: int = field(default=1, metadata={"help": "untimed rounds first"})
    shape: tuple[int, ...] = field(
        default=LVU_SHAPE, metadata={"help": "frames, tokens per frame, channels", "metavar": "N"}
    )
    windows: tuple[int, ...] = field(default=LVU_WINDOWS, metadata={"help": "frames per window of each block"})
    attention: str = field(
        default="sdpa",
        metadata={"help": "fused kernels, or the explicit attention matrix (math)", "choices": ATTENTION_KERNELS},
    )
    device: str | None = device_option()
    seed: int = field(default=0, metadata={"help": "seed of the weights and tokens"})
    train: bool = field(
        default=False,
        metadata={"help": "time a training step (forward of the main and auxiliary paths, loss, backward) "
                          "instead of inference"},
    )

    def __post_init__(self) -> None:
        self.gamma, self.shape, self.windows = tuple(self.gamma), tuple(self.shape), tuple(self.windows)
        if len(self.shape) != 3:
            raise ValueError(f"shape={self.shape} must be three numbers: frames, tokens per frame, channels")


def benchmark(config: VTMBenchConfig) -> list[dict[str, float]]:
    """One result per gamma: samples/s and peak MiB of the baseline and of VTM, their ratio and saving, for
    inference or (``config.train``) a training step.

    The settings are checked (windows that nest and divide the frames, a token grid) before anything is built.
    """
    partition, gammas, shape, windows, attention = (
        config.partition, config.gamma, config.shape, config.windows, config.attention
    )
    batch_size, seed, train = config.batch_size, config.seed, config.train
    configs = [bench_config(None, 1.0, shape, windows, attention)]
    configs += [bench_config(partition, gamma, shape, windows, attention) for gamma in gammas]
    torch.manual_seed(seed)
    device = resolve_device(config.device)
    tokens = torch.randn(batch_size, *shape, device=device)
    motion = torch.rand(batch_size, *shape[:2], device=device)
    models = [VideoTokenMerger(config).to(device).train(train) for config in configs]
    labels = torch.randint(configs[0].num_outputs, (batch_size,), device=device)

    def runner(model: VideoTokenMerger):
        def run() -> None:
            if not train:
                with torch.no_grad():
                    model(tokens, motion)
                return
            model.zero_grad(set_to_none=True)
            vtm_loss(model(tokens, motion), labels, regression=False).backward()
        return run

    calls = [runner(model) for model in models]
    seconds = time_interleaved(calls, warmup=config.warmup, repeats=config.repeats, device=device, desc="vtm bench")
    peaks = [peak_memory_mb(call, device) for call in calls]
    results = []
    for gamma, vtm_seconds, vtm_peak in zip(gammas, seconds[1:], peaks[1:]):
        results.append({
            "partition": partition,
            "gamma": gamma,
            "attention": attention,
            "mode": "train" if train else "inference",
            "batch_size": batch_size,
            "baseline_samples_per_s": batch_size / seconds[0],
            "vtm_samples_per_s": batch_size / vtm_seconds,
            "speedup": seconds[0] / vtm_seconds,
            "baseline_peak_mb": peaks[0],
            "vtm_peak_mb": vtm_peak,
            "memory_reduction": 1.0 - vtm_peak / peaks[0],
        })
    return results
