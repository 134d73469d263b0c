"""The one command line of training; fgresq_sdk.cli registers it as `fgresq-sdk train`:

    from fgresq_sdk.train.cli import train_cmd
    app.command("train")(train_cmd)

Conventions of the main CLI: machine-readable output (the run summary, JSON) on stdout, progress and
one-line errors on stderr, exit code 2 for usage errors (bad config, missing manifest, nothing to resume).
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

__all__ = ["Stage", "train_cmd", "list_train_configs_cmd"]


class Stage(str, Enum):
    all = "all"
    dfl = "dfl"
    fgresq = "fgresq"


def train_cmd(
    config: Path = typer.Option(..., "--config", "-c",
                                help="Training config JSON (e.g. train/configs/compact-synthetic.json) or a shipped name."),
    manifest: Optional[Path] = typer.Option(None, "--manifest",
                                            help="Training manifest folder (overrides the config's \"manifest\")."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, logs.jsonl, model.safetensors, bundle/."),
    stage: Stage = typer.Option(Stage.all, "--stage",
                                help="all: stage 1 (degradation-aware feature learning) then stage 2; or one stage."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest epoch checkpoint."),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained",
                                              help="Local open_clip CLIP checkpoint for both towers and the text tower."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override the epochs of every stage that runs."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: all cores)."),
    export: bool = typer.Option(False, "--export", help="Export an ONNX bundle to OUT/bundle at the end."),
    val_manifest: Optional[Path] = typer.Option(None, "--val-manifest",
                                                help="Validation manifest, evaluated after every epoch."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar on stderr."),
    init_checkpoint: Optional[Path] = typer.Option(
        None, "--init-checkpoint",
        help="With --stage fgresq: start stage 2 from this model checkpoint (a further cycle on a finished model)."),
    compile_steps: Optional[bool] = typer.Option(
        None, "--compile/--no-compile",
        help="torch.compile the towers in full training batches: ~1/3 less step time on CPUs, float-noise "
             "different weights; needs a C++ compiler, else it trains eagerly and says why (default: the "
             "config's \"compile\", off)."),
) -> None:
    """Train FGResQ: stage 1 (degradation-aware feature learning), then stage 2 (score + compare heads)."""
    from .config import TrainError, load_train_config
    from .kernels import missing_pins, reexec_with

    try:
        pins = missing_pins(load_train_config(config)["cpu_kernels"])
    except TrainError:
        pins = {}  # run_training reports the config's problem
    if pins and _started_as_cli():
        reexec_with(pins)  # the kernel pins must be in place before torch loads (train/kernels.py)

    from .logs import jsonable
    from .run import run_training

    try:
        res = run_training(config, out, manifest=manifest, stage=stage.value if isinstance(stage, Enum) else stage,
                           resume=resume, pretrained=pretrained, epochs=epochs, threads=threads,
                           export=True if export else None, val_manifest=val_manifest, progress=progress,
                           init_checkpoint=init_checkpoint, compile_steps=compile_steps)
    except (TrainError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2)
    typer.echo(json.dumps(jsonable(res), indent=2))


def _started_as_cli() -> bool:
    """True when this process is the `fgresq-sdk` command (or python -m fgresq_sdk.cli), so starting it again
    with other environment variables repeats exactly what the user ran; called from Python (a test's CliRunner),
    run_training refuses a portable config without its pins instead."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return Path(sys.argv[0]).name == "fgresq-sdk" or getattr(spec, "name", "") in ("fgresq_sdk.cli", "fgresq_sdk")


def list_train_configs_cmd() -> None:
    """List the training configs shipped with the SDK (train/configs/*.json)."""
    from .config import list_train_configs, load_train_config

    for name in list_train_configs():
        cfg = load_train_config(name)
        typer.echo(f"{name}\t{cfg['model']}\t{cfg['description'].split('.')[0]}")
