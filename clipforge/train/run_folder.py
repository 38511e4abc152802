"""The run folder: where a run's config, metrics, checkpoints and plots live.

Layout::

    RUN_DIR/config.yaml          resolved TrainConfig
    RUN_DIR/model.yaml           resolved model architecture
    RUN_DIR/metrics.jsonl        one JSON object per logged step and per evaluation
    RUN_DIR/checkpoints/last.pt  model, optimizer, step, data position, RNG states
    RUN_DIR/checkpoints/final.pt the trained model (weights + architecture)
    RUN_DIR/eval.json            final held-out evaluation
    RUN_DIR/curve.png            training curve
    RUN_DIR/.clipforge-output    marks the folder as a run (see :mod:`clipforge.outputs`)

A new run goes only into a new or empty folder, or with ``overwrite`` replaces an earlier
run; the folder is checked before anything is built. Only the main process writes; the
others read the config on resume.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from clipforge import checkpoint as ckpt
from clipforge.config import from_dict, load_yaml, save_yaml, to_dict
from clipforge.errors import ClipforgeError
from clipforge.models import ModelConfig
from clipforge.outputs import (
    OutputFolder,
    atomic_write,
    mark,
    marker_command,
    remove_stale_temporaries,
)
from clipforge.train import distributed
from clipforge.train.config import TrainConfig
from clipforge.train.distributed import World
from clipforge.train.resume import resumed_config


class MetricsLog:
    """Append-only JSONL, truncated back to the checkpoint on resume.

    The truncation also drops a ``final`` record: a resumed run writes its own when it
    finishes, whether the first part died while finishing or ended at fewer steps.
    """

    def __init__(
        self, path: Path, resume_step: int | None, tensorboard: Path | None = None
    ) -> None:
        self.path = path
        # TensorBoard event files mirror the log (``--log tensorboard``); metrics.jsonl
        # stays the source of truth. A resumed run purges the events after its checkpoint,
        # as the JSONL is truncated there.
        self.board = None
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(tensorboard), purge_step=resume_step)
        if resume_step is not None and path.exists():
            keep = []
            for line in path.read_text().splitlines():
                rec = json.loads(line) if line.strip() else None
                if rec is not None and rec.get("step", 0) <= resume_step and not rec.get("final"):
                    keep.append(line)
            path.write_text("".join(line + "\n" for line in keep))
        elif resume_step is None:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.board is not None:
            split = record.get("split")
            for key, value in record.items():
                if (
                    key != "step"
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    tag = f"{split}/{key}" if split else key
                    self.board.add_scalar(tag, value, record["step"])
            self.board.flush()


def new_run_dir(out: str | None) -> Path:
    """``--out``, or a timestamped folder under ``runs/``."""
    if out:
        return Path(out)
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _is_run_folder(path: Path) -> bool:
    """A run folder written before folders were marked: a config and a checkpoint."""
    checkpoints = path / "checkpoints"
    return (path / "config.yaml").is_file() and any(
        (checkpoints / name).is_file() for name in ("last.pt", "final.pt")
    )


def _inputs(cfg: TrainConfig) -> list[str]:
    """What the run reads: the data (maybe a shard pattern) and every other config value
    naming an existing file or folder (``--init``, a teacher, a synonym file, ...)."""

    def strings(value: object) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        return [value] if isinstance(value, str) else []

    values = {k: v for k, v in to_dict(cfg).items() if k not in ("out", "data")}
    found = [s for s in strings(values) if s and os.path.exists(s)]
    return [cfg.data, *found] if cfg.data else found


class RunFolder:
    """Paths and files of one run folder."""

    def __init__(self, path: Path, world: World, claim: OutputFolder | None = None) -> None:
        self.path = path
        self.claim = claim  # a new run's checked output folder (main process only)
        self.main = world.is_main
        self.saved: TrainConfig | None = None  # a resumed run's config as its folder had it
        self.config = path / "config.yaml"
        self.model_yaml = path / "model.yaml"
        self.metrics = path / "metrics.jsonl"
        self.last = path / "checkpoints" / "last.pt"
        self.final = path / "checkpoints" / "final.pt"
        self.eval_json = path / "eval.json"
        self.curve = path / "curve.png"
        self.precision = path / "precision.json"

    @classmethod
    def new(cls, cfg: TrainConfig, world: World, overwrite: bool = False) -> RunFolder:
        """The folder a new run will write, checked by the output rule (nothing is
        created yet); ``overwrite`` lets it replace an earlier run."""
        # A default folder name is a timestamp: rank 0's is the one every rank uses.
        path = Path(distributed.broadcast(str(new_run_dir(cfg.out)), world))
        # The main process checks and the others follow its verdict: checking on every
        # rank would race with the main process creating the folder.
        claim, problem = None, None
        if world.is_main:
            try:
                claim = OutputFolder(
                    path, "train", overwrite=overwrite, inputs=_inputs(cfg), noun="a run",
                    hint=f", --resume {path} to continue it, or choose another --out",
                    also_own=_is_run_folder,
                )  # fmt: skip
            except ClipforgeError as e:
                problem = str(e)
        problem = distributed.broadcast(problem, world)
        if problem is not None:
            raise ClipforgeError(problem)
        return cls(path, world, claim)

    @classmethod
    def resume(
        cls,
        path: str | Path,
        cfg: TrainConfig,
        world: World,
        changes: Mapping[str, Any] | None = None,
    ) -> tuple[RunFolder, TrainConfig, dict[str, Any] | None]:
        """The folder, the config the run continues with (its saved one with the
        ``changes`` a resume allows, :mod:`~clipforge.train.resume`) and its last training
        state (None when it stopped before the first checkpoint). Nothing is written."""
        folder = cls(Path(path), world)
        if not folder.config.is_file():
            raise ClipforgeError(f"not a clipforge run folder (no config.yaml): {folder.path}")
        folder.saved = from_dict(TrainConfig, load_yaml(folder.config), str(folder.path))
        state = ckpt.load(folder.last) if folder.last.exists() else None
        step = int(state["step"]) if state is not None else 0
        cfg = resumed_config(folder.saved, changes or {}, cfg, folder.path, step)
        return folder, cfg, state

    def is_complete(self, cfg: TrainConfig, state: dict[str, Any] | None) -> bool:
        """Whether a resumed run has nothing left to do: trained to ``cfg.steps`` and
        finished (``final.pt`` is written last)."""
        return state is not None and int(state["step"]) >= cfg.steps and self.final.is_file()

    def create(
        self,
        cfg: TrainConfig,
        model_config: ModelConfig,
        fresh: bool,
        precision: dict[str, str] | None = None,
    ) -> TrainConfig:
        """Make the folder; a ``fresh`` run records its config, architecture and how its
        precision was chosen, a resumed one a changed number of steps."""
        if not self.main:
            return cfg
        if self.claim is not None:
            self.claim.prepare()  # only now, once the config has been checked
        elif marker_command(self.path) is None:
            mark(self.path, "train")  # a resumed run from before folders were marked
        self.last.parent.mkdir(parents=True, exist_ok=True)
        if not fresh:
            remove_stale_temporaries(self.path)  # a checkpoint a kill caught half-written
        if not fresh and self.saved is not None and cfg.steps != self.saved.steps:
            save_yaml(replace(self.saved, steps=cfg.steps), self.config)
        if fresh:
            cfg = replace(cfg, out=str(self.path))
            save_yaml(cfg, self.config)
            plain = ckpt.plain_config(model_config)
            self.model_yaml.write_text(yaml.safe_dump(plain, sort_keys=False))
            if precision is not None:
                self.precision.write_text(json.dumps(precision, indent=2) + "\n")
        return cfg

    def log(self, resume_step: int | None, tensorboard: bool = False) -> MetricsLog | None:
        board = self.path / "tensorboard" if tensorboard else None
        return MetricsLog(self.metrics, resume_step, board) if self.main else None

    def save_last(self, state: dict[str, Any]) -> None:
        if self.main:
            ckpt.atomic_save(state, self.last)

    def finish(self, final: dict[str, Any], model_state: dict[str, Any]) -> None:
        """Write ``eval.json``, ``final.pt`` and the training curve."""
        if not self.main:
            return
        atomic_write(self.eval_json, json.dumps(final, indent=2) + "\n")
        ckpt.atomic_save(model_state, self.final)
        try:
            from clipforge.train.plots import plot_curve

            plot_curve(self.metrics, self.curve)
        except Exception as e:  # a plot must never fail a finished run
            print(f"warning: could not plot the training curve: {e}", file=sys.stderr)
