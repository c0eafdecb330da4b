"""The paper's fine-tuning hyperparameters (its supplementary Table 5) as named presets, and the optimizer and
learning-rate schedule they describe.

Every value of a recipe is overridable by the ``videotome finetune`` flag of the same name. The batch is global: it
is split over processes and gradient accumulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")


@dataclass(frozen=True)
class Recipe:
    """One family's fine-tuning hyperparameters.

    ``momentum`` is SGD's momentum or AdamW's first beta. The step schedule multiplies ``lr`` by ``rates[i]`` from
    epoch ``steps[i]`` on; the cosine schedule decays to 0 after ``warmup_epochs`` of linear warm-up from 0.
    """

    family: str
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    epochs: int
    schedule: str
    warmup_epochs: float = 0.0
    steps: tuple[int, ...] = ()
    rates: tuple[float, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not one of {SCHEDULES}")
        if self.schedule == "step" and (len(self.steps) != len(self.rates) or not self.steps or self.steps[0] != 0):
            raise ValueError(f"a step schedule needs one rate per step epoch, the first at epoch 0; got steps "
                             f"{self.steps} and rates {self.rates}")
        if self.lr <= 0 or self.epochs < 1 or self.batch_size < 1 or self.warmup_epochs < 0:
            raise ValueError(f"lr, epochs and batch size must be positive and warm-up non-negative, got {self}")

    def lr_factor(self, epoch: float) -> float:
        """The multiple of ``lr`` at a (fractional) epoch."""
        if self.schedule == "step":
            return self.rates[max(i for i, start in enumerate(self.steps) if epoch >= start)]
        if epoch < self.warmup_epochs:
            return epoch / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-12)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - self.warmup_epochs) / span)))

    def make_optimizer(self, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The recipe's optimizer over ``parameters``."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.AdamW(parameters, lr=self.lr, betas=(self.momentum, 0.999), weight_decay=self.weight_decay)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: float) -> torch.optim.lr_scheduler.LambdaLR:
        """The schedule as a per-optimizer-step ``LambdaLR`` (``steps_per_epoch`` optimizer steps make an epoch)."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step / steps_per_epoch))


#: the paper's Table 5 (TimeSformer, VideoMAE, ViViT) and the Motionformer's own EPIC-KITCHENS settings
RECIPES: dict[str, Recipe] = {
    "timesformer": Recipe("timesformer", 128, "sgd", 5e-3, 0.9, 1e-4, 15, "step", steps=(0, 11, 14),
                          rates=(1.0, 0.1, 0.01), source="the paper's Table 5 (weight decay: TimeSformer's configs)"),
    "videomae": Recipe("videomae", 128, "adamw", 1e-3, 0.9, 0.05, 50, "cosine", warmup_epochs=5.0,
                       source="the paper's Table 5 (weight decay: VideoMAE's fine-tuning settings)"),
    "vivit": Recipe("vivit", 64, "sgd", 1e-2, 0.9, 0.0, 50, "cosine", warmup_epochs=2.5,
                    source="the paper's Table 5"),
    "motionformer": Recipe("motionformer", 32, "adamw", 1e-4, 0.9, 0.05, 35, "step", steps=(0, 20, 30),
                           rates=(1.0, 0.1, 0.01),
                           source="the Motionformer repository's EPIC-KITCHENS config (SOLVER: adamw, "
                                  "steps_with_relative_lrs)"),
}
