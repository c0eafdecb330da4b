"""Writing testbed clips to disk, so the file-based tools (``videotome eval --dataset csv``) can read them too.

``labels.csv`` is the csv format with a header naming its columns (``path verb noun``), so each clip gets a verb
and a noun label, the heads of the packaged checkpoints: ``videotome eval --model CHECKPOINT --dataset csv --root
OUT --annotations OUT/labels.csv`` scores them as the demo does in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..options import option
from .data import HEADS, NOUNS, SPLITS, VERBS, generate, validation_set

FPS = 8
LABELS = "labels.csv"


@dataclass
class GenerateConfig:
    """Clips to write; every field is a ``videotome testbed generate`` flag."""

    out: str = option(help="directory for the videos and the lists")
    split: str = option("val", "which split's clips", choices=SPLITS)
    count: int = option(64, "clips to write")
    seed: int | None = option(None, "default (val only): the fixed validation set")

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be at least 1, got {self.count}")
        if self.seed is None and self.split != "val":
            raise ValueError(f"the {self.split} split needs a seed (only the validation split has a fixed one)")


def write_videos(config: GenerateConfig) -> Path:
    """Write ``config.count`` clips as lossless H.264 (RGB) mp4 files under ``config.out/videos`` with ``labels.csv``
    (a ``path verb noun`` header, then one ``relative/path verb noun`` line per clip) and ``clips.json`` (labels,
    digit image and sprite track per clip).

    Returns the directory. Without a seed, the validation split gives the first ``count`` clips of the fixed
    validation set (those the demo scores); a training split needs a seed.
    """
    import av

    split, count, seed = config.split, config.count, config.seed
    clips = validation_set(count) if seed is None else generate(split, count, seed)
    out = Path(config.out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    described = []
    for index in range(count):
        name = f"videos/{split}-{index:05d}.mp4"
        with av.open(str(out / name), "w") as container:
            stream = container.add_stream("libx264rgb", rate=FPS, options={"qp": "0"})
            stream.width = stream.height = clips.video.shape[-1]
            stream.pix_fmt = "rgb24"
            for frame in clips.video[index].permute(0, 2, 3, 1).numpy():
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        described.append(
            {
                "path": name,
                "verb": int(clips.verb[index]),
                "noun": int(clips.noun[index]),
                "verb_name": VERBS[int(clips.verb[index])],
                "noun_name": NOUNS[int(clips.noun[index])],
                "digit_index": int(clips.digit_index[index]),
                "track": clips.track[index].tolist(),
            }
        )
    columns = ["path", *HEADS]
    lines = [" ".join(columns)] + [" ".join(str(clip[column]) for column in columns) for clip in described]
    (out / LABELS).write_text("\n".join(lines) + "\n")
    (out / "clips.json").write_text(json.dumps({"split": split, "seed": seed, "clips": described}) + "\n")
    return out
