"""A training run: stage 1 (``dfl.py``) then stage 2 (``stage2.py``), or one of them, into one run folder.

Run layout (``out/``)::

    config.json                  resolved training config of the run
    logs.jsonl                   one JSON object a line (schema: logs.LOG_SCHEMA)
    dfl/epoch-NNN.safetensors    model after stage-1 epoch NNN (our checkpoint format)
    dfl/epoch-NNN.state.safetensors   optimizer + scheduler + RNG + counters, for --resume
    dfl/model.safetensors        model at the end of stage 1 (marks the stage complete)
    fgresq/...                   the same for stage 2
    model.safetensors            final model
    bundle/                      exported bundle (ONNX + checkpoint) when asked for

``resume`` skips completed stages and continues a stage from its newest epoch checkpoint: weights,
Adam moments, LR schedule position, RNG states and counters are restored, and batches and crops are pure
functions of (seed, epoch), so the run continues exactly as if it had not stopped (resume with the same
config and options). The command line is ``fgresq-sdk train`` (``cli.py``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fgresq_sdk.cpu import cpu_generation, cpu_isa, cpu_model
from fgresq_sdk.model import FGResQ, load_checkpoint, save_checkpoint

from .allocator import keep_freed_memory
from .checkpoints import FINAL_NAME, load_weights_into
from .compiled import toolchain_problem
from .config import STAGES, TrainError, load_train_config
from .datasets import ImageCache, TransformSpec
from .dfl import load_pretrained, run_dfl
from .kernels import apply_in_process, missing_pins
from .kernels import describe as describe_kernels
from .logs import JsonlLogger, Progress
from .loop import set_seed, set_threads
from .manifest import MANIFEST_FILE, Manifest, split_manifest
from .stage2 import run_fgresq

__all__ = ["run_training"]


def _resolve(p: str | os.PathLike | None) -> Path | None:
    return None if p in (None, "") else Path(p).expanduser()


def _load_manifest(path: Path):
    if not path.exists():
        raise TrainError(f"manifest {path}: not found")
    if path.is_dir() and not (path / MANIFEST_FILE).is_file():
        raise TrainError(f"manifest {path}: no {MANIFEST_FILE} in this folder (not a training manifest)")
    return Manifest.load(path)


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "numpy": np.__version__}
    try:
        import open_clip

        out["open_clip"] = open_clip.__version__
    except Exception:  # noqa: BLE001
        pass
    return out


def run_training(config: str | os.PathLike | dict | None, out: str | os.PathLike, *,
                 manifest: str | os.PathLike | None = None, stage: str = "all", resume: bool = False,
                 pretrained: str | os.PathLike | None = None, epochs: int | None = None,
                 threads: int | None = None, export: bool | None = None, val_manifest=None,
                 progress: bool = True, init_checkpoint: str | os.PathLike | None = None,
                 compile_steps: bool | None = None) -> dict[str, Any]:
    """Run stage 1 then stage 2 (or one of them) into `out`; returns a summary dict.

    epochs overrides the epoch count of every stage that runs. init_checkpoint (stage "fgresq" only): start
    stage 2 from that model instead of ``out/dfl``. compile_steps overrides the config's "compile" (train/compiled.py).
    Raises TrainError for usage problems.
    """
    if init_checkpoint is not None and stage != "fgresq":
        raise TrainError("init_checkpoint needs stage='fgresq'")
    t0 = time.perf_counter()
    if stage not in ("all",) + STAGES:
        raise TrainError(f"unknown stage {stage!r} (all, dfl or fgresq)")
    tcfg = load_train_config(config)
    if manifest is not None:
        tcfg["manifest"] = str(manifest)
    if val_manifest is not None:
        tcfg["val_manifest"] = str(val_manifest)
    if pretrained is not None:
        tcfg["pretrained"] = str(pretrained)
    if threads is not None:
        tcfg["threads"] = int(threads)
    if export is not None:
        tcfg["export"] = bool(export)
    if epochs is not None:
        for s in STAGES:
            tcfg[s]["epochs"] = int(epochs)
    if compile_steps is not None:
        tcfg["compile"] = bool(compile_steps)
    if tcfg["compile"] and tcfg["cpu_kernels"] == "portable":
        raise TrainError("compile cannot be used with cpu_kernels 'portable': compiled kernels add in their own "
                         "order, so the weights would no longer be the same on every CPU")
    pins = missing_pins(tcfg["cpu_kernels"])
    if pins:
        raise TrainError(f"cpu_kernels {tcfg['cpu_kernels']!r} needs " + " ".join(f"{k}={v}" for k, v in pins.items())
                         + " in the environment before torch loads (`fgresq-sdk train` sets them itself)")
    if tcfg["manifest"] is None:
        raise TrainError("no training manifest (give --manifest or set \"manifest\" in the config)")
    if tcfg["requires_pretrained"] and not tcfg["pretrained"]:
        raise TrainError(f"training config {tcfg['name']} needs pretrained CLIP weights (--pretrained PATH)")
    # data, read before anything is written: a mistyped manifest leaves no half-made run folder behind
    train_m = _load_manifest(_resolve(tcfg["manifest"]))
    val_m = _load_manifest(_resolve(tcfg["val_manifest"])) if tcfg["val_manifest"] else None
    if val_m is None and float(tcfg["val_fraction"]) > 0:
        train_m, val_m = split_manifest(train_m, 1.0 - float(tcfg["val_fraction"]), seed=int(tcfg["seed"]))
    out = Path(out)
    log_path = out / "logs.jsonl"
    if not resume and (log_path.exists() or any((out / s).exists() for s in STAGES)):
        raise TrainError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    apply_in_process(tcfg["cpu_kernels"])
    n_threads = set_threads(tcfg["threads"])
    allocator = keep_freed_memory()
    compiled = {"requested": bool(tcfg["compile"]), "active": False}
    if tcfg["compile"]:
        problem = toolchain_problem()
        compiled.update(active=problem is None, **({"eager_because": problem} if problem else {}))
        if problem:
            print(f"warning: --compile: training eagerly, torch.compile does not work here ({problem})",
                  file=sys.stderr)
    logger = JsonlLogger(log_path, t0)
    (out / "config.json").write_text(json.dumps(tcfg, indent=2) + "\n", encoding="utf-8")
    stages = list(STAGES) if stage == "all" else [stage]
    logger.log("run_start", config=tcfg, out=str(out), stage=stage, resume=resume, manifest=tcfg["manifest"],
               val_manifest=tcfg["val_manifest"], pretrained=tcfg["pretrained"], threads=n_threads,
               allocator=allocator, torch=torch.__version__, versions=_versions(),
               cpu=cpu_model(), cpu_generation=cpu_generation(), isa=cpu_isa(),
               kernels=describe_kernels(tcfg["cpu_kernels"]), compile=compiled)

    cache = ImageCache(tcfg["data"]["cache_mb"])
    prog = Progress(progress)

    # model
    seed = int(tcfg["seed"])
    set_seed(seed)
    model = FGResQ(tcfg["model"])
    if tcfg["data"]["eval_view"] == "center-crop":  # val, calibration and the bundle see the training geometry
        model.cfg["preprocess"] = TransformSpec.from_config(model.cfg, tcfg["data"]).center_crop_view.to_dict()
    if tcfg["data"]["eval_mirror"]:
        model.cfg["mirror_views"] = True
    init = "random init"
    pre = _resolve(tcfg["pretrained"])
    pre_report = None
    if pre is not None:
        pre_report = load_pretrained(model, pre)
        init = f"pretrained {pre}"
    text_state = pre_report.pop("text_state", None) if pre_report else None
    model.to(tcfg["device"])
    dfl_final = out / "dfl" / FINAL_NAME

    def run_stage(name: str, seed_offset: int, run: Callable[[], Path]) -> Path:
        """A stage that a resumed run has completed is loaded, not run again (each stage seeds afresh)."""
        final = out / name / FINAL_NAME
        if resume and final.is_file():
            load_weights_into(model, final)
            logger.log("stage_skip", stage=name, reason="complete", model=str(final))
            return final
        set_seed(seed + seed_offset)
        return run()

    try:
        if "dfl" in stages:
            dfl_final = run_stage("dfl", 1, lambda: run_dfl(
                model, train_m, tcfg, out / "dfl", logger, val_m=val_m, resume=resume, progress=prog, cache=cache,
                text_state=text_state, pretrained_logit_scale=(pre_report or {}).get("logit_scale"), init=init,
                compile_steps=compiled["active"]))
            init = f"stage 1 ({dfl_final})"
        elif init_checkpoint is not None and "fgresq" in stages:
            # continue stage 2 from a finished model (a second cosine cycle on more data; "warm restart")
            load_weights_into(model, Path(init_checkpoint))
            init = f"checkpoint ({init_checkpoint})"
        elif dfl_final.is_file() and "fgresq" in stages:
            load_weights_into(model, dfl_final)
            init = f"stage 1 ({dfl_final})"
        if "fgresq" in stages:
            run_stage("fgresq", 2, lambda: run_fgresq(model, train_m, tcfg, out / "fgresq", logger, val_m=val_m,
                                                      resume=resume, progress=prog, cache=cache, init=init,
                                                      compile_steps=compiled["active"]))
    finally:
        prog.stop()
    model.eval().cpu()
    final = save_checkpoint(model, out / FINAL_NAME, source=f"fgresq-sdk train ({tcfg['name']}, stage {stage})",
                            extra={"train_config": json.dumps(tcfg, sort_keys=True)})
    bundle = None
    if tcfg["export"]:
        from fgresq_sdk.export.onnx_export import export_bundle

        bundle = export_bundle(load_checkpoint(final), out / "bundle", force=True,
                               source=f"fgresq-sdk train ({tcfg['name']})")
    wall = time.perf_counter() - t0
    logger.log("run_end", model=str(final), bundle=str(bundle) if bundle else None, wall_s=round(wall, 3))
    return {"out": str(out), "model": str(final), "bundle": str(bundle) if bundle else None,
            "logs": str(log_path), "stages": stages, "pretrained": pre_report, "wall_s": wall}
