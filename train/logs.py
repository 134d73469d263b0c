"""What a run reports: JSON-safe values, the JSONL run log (schema LOG_SCHEMA) and the progress bar.

The log is the run's record (epoch selection in scripts/make_default_model.sh reads it), so every line is
strict JSON written and flushed at once: a killed run keeps a readable log. Torch-free: the evaluation
writes its JSON through ``jsonable`` too.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LOG_SCHEMA", "jsonable", "JsonlLogger", "Progress", "training_machine"]

# The JSONL log: every line has "event", "time" (UTC ISO-8601) and "elapsed_s" (since the run started).
LOG_SCHEMA = {
    "run_start": ["config", "out", "stage", "resume", "manifest", "val_manifest", "pretrained", "threads",
                  "torch", "versions", "cpu", "cpu_generation", "isa", "kernels"],
    "stage_start": ["stage", "start_epoch", "epochs", "steps_per_epoch", "total_steps", "n_train",
                    "n_trainable_params", "init"],
    "step": ["stage", "epoch", "step", "epoch_step", "steps_per_epoch", "lr", "loss",
             "(dfl) acc", "(fgresq) loss_scene, loss_rank, scene, pairs", "step_s"],
    "epoch": ["stage", "epoch", "epochs", "step", "loss", "(mean of every step metric)", "val (or null)",
              "checkpoint", "state", "epoch_s"],
    "stage_end": ["stage", "model", "epochs"],
    "stage_skip": ["stage", "reason", "model"],
    "run_end": ["model", "bundle (or null)", "wall_s"],
}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def jsonable(x: Any) -> Any:
    """x as plain JSON values at any depth: NaN/±inf → None (JSON has no NaN), numpy and one-element torch
    scalars → Python numbers, paths → strings (torch is recognised by duck typing, never imported)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating, np.integer)):
        return jsonable(x.item())
    if hasattr(x, "numel") and hasattr(x, "item") and x.numel() == 1:  # a torch scalar tensor
        return jsonable(x.item())
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    return x


class JsonlLogger:
    """Appends one JSON object a line (flushed each line, so a killed run keeps its log)."""

    def __init__(self, path: str | os.PathLike | None, t0: float | None = None):
        self.path = Path(path) if path is not None else None
        self.t0 = time.perf_counter() if t0 is None else t0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, event: str, **fields: Any) -> dict:
        rec = {"event": event, "time": _now(), "elapsed_s": round(time.perf_counter() - self.t0, 3)}
        rec.update(jsonable(fields))
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(rec, allow_nan=False) + "\n")
        return rec


class Progress:
    """A rich progress bar on stderr (stage, epoch, loss, ETA); a no-op when disabled."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._p = None
        self._task = None

    def start(self, description: str, total: int, completed: int = 0) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.stop()
        self._p = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                               TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self._p.start()
        self._task = self._p.add_task(description, total=total, completed=completed, info="")

    def update(self, advance: int = 1, info: str = "", description: str | None = None) -> None:
        if self._p is not None:
            kw = {"description": description} if description else {}
            self._p.update(self._task, advance=advance, info=info, **kw)

    def stop(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None


def training_machine(log_path: str | os.PathLike) -> dict[str, Any]:
    """The machine a run trained on, from its log's run_start: CPU model, ISA, kernels, torch, threads. Why: the
    training is deterministic on one CPU type but not across types (README, "CPU kernels"), so a bundle that
    names where its weights were trained says where the recipe reproduces them byte for byte."""
    for line in Path(log_path).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("event") == "run_start":
            kernels = rec.get("kernels") or {}
            return {"cpu": rec.get("cpu"), "cpu_generation": rec.get("cpu_generation"), "isa": rec.get("isa"),
                    "cpu_kernels": kernels.get("cpu_kernels", "native"),
                    "aten_capability": kernels.get("aten_capability"), "torch": rec.get("torch"),
                    "threads": rec.get("threads")}
    raise ValueError(f"{log_path}: no run_start line")
