"""The donor of a splice chosen from a run's saved logits: the clip of the same class whose predictions are nearest.

Nearness is the KL divergence of the donor's softmax from the source's (summed over heads), read from the logits an
evaluation saved (:func:`videotome.evaluation.logits.read_logits`); the clips' labels and video paths come from the
run's results file (clip lines, and the header's dataset, annotations and root).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import VideotomeError
from ..evaluation.harness import EvalConfig, read_samples
from ..evaluation.logits import read_logits
from ..evaluation.results import read_runs


def kl_divergence(source: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    """KL(softmax(source) || softmax(other)), summed over the heads of two clips' logits."""
    total = 0.0
    for head, logits in source.items():
        log_p, log_q = logits.float().log_softmax(-1), other[head].float().log_softmax(-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
    return total


def nearest_donor(results: str | Path, video_id: str) -> tuple[str, Path]:
    """The id and video path of the clip of ``video_id``'s class nearest to it by :func:`kl_divergence` of their
    saved logits, in the results file ``results`` (its last run that holds ``video_id``)."""
    runs = [run for run in read_runs(results) if video_id in run.records]
    if not runs:
        raise VideotomeError(f"{results} has no clip {video_id!r}")
    run = runs[-1]
    labels = {clip: record["labels"] for clip, record in run.records.items() if record.get("error") is None}
    logits = read_logits(results, run.id)
    if video_id not in logits:
        raise VideotomeError(f"{results} saved no logits of clip {video_id!r}")
    candidates = [clip for clip in logits if clip != video_id and labels.get(clip) == labels.get(video_id)]
    if not candidates:
        raise VideotomeError(f"{results} holds no other clip of {video_id!r}'s class {labels.get(video_id)}")
    donor = min(candidates, key=lambda clip: kl_divergence(logits[video_id], logits[clip]))
    settings, root = run.settings, run.header.get("root")
    if root is None:
        raise VideotomeError(f"{results} does not name its videos' folder (written before videotome recorded it)")
    clips = EvalConfig(model=settings["model"], dataset=settings["dataset"], annotations=settings["annotations"],
                       root=root, classes=settings.get("classes"))
    paths = {sample.id: sample.path for sample in read_samples(clips, Path(settings["model"]))}
    return donor, paths[donor]
