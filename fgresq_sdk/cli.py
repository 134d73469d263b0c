"""`fgresq-sdk`: one entry point to score, compare, rank, export, import and inspect FGResQ models.

Command names, options and JSON keys are a contract other tools read. Machine-readable output goes to
stdout; progress and one-line error messages go to stderr. Exit codes: 0 all inputs succeeded, 1 some
inputs failed (the rest are still reported), 2 usage errors (bad option, missing model, bad bundle, a
command whose optional extra is not installed). Errors are one `error: ...` line each, never a traceback.
`--format table|json|csv` is honoured by every command that has it; a value that does not exist (a single
image's win rate) is null in JSON, an empty field in CSV and "-" in tables. `-h` is `--help` everywhere.
"""
from __future__ import annotations

import functools
import logging
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from . import formats
from .errors import FGResQError, display_path
from .output import emit_csv, emit_json, emit_table, err_console, one_line, progress, report_errors


class _FlagsShowNoType:
    """Help lists a flag (--recursive, --force, --help…) without a `<bool>` value placeholder: a flag
    takes no value. (Some typer versions print the bool type for flags in the rich help.)"""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False) and getattr(p, "metavar", None) is None:
                p.metavar = ""
        return params


class _Command(_FlagsShowNoType, TyperCommand):
    pass


class _Group(_FlagsShowNoType, TyperGroup):
    pass


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_Group,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Fine-grained quality assessment of restored images with FGResQ.")

# Optional extras (pyproject.toml) → the modules a command imports from them.
TORCH_MODULES, EXPORT_MODULES = formats.TORCH_MODULES, formats.EXPORT_MODULES
TRAIN_MODULES = TORCH_MODULES + ("scipy", "skimage")
EVAL_MODULES = ("scipy", "skimage")


def _require(what: str, extra: str, modules: tuple[str, ...]) -> None:
    """Usage error (exit 2) naming the extra to install when a module `what` needs is not importable."""
    from .backends.probe import importable

    absent = [m for m in modules if not importable(m)]
    if absent:
        _fail(f"{what} needs the {extra} extra: pip install 'fgresq-sdk[{extra}]' (missing: {', '.join(absent)})")


def _version() -> str:
    import importlib.metadata as md

    try:
        return md.version("fgresq-sdk")
    except md.PackageNotFoundError:  # run from a source tree that is not installed
        from . import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fgresq-sdk {_version()}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Fine-grained quality assessment of restored images with FGResQ."""


def _memory_available() -> int:
    """Bytes of memory available now (MemAvailable), or 8 GiB where that cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 << 30


def max_rank_group(with_report: bool) -> tuple[int, int]:
    """(largest group the all-pairs ranking fits in half of the available memory, that budget in bytes)."""
    from .ranking import max_rank_size

    budget = _memory_available() // 2
    return max_rank_size(budget, keep_preference=with_report), budget


class Fmt(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


class BackendName(str, Enum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    torch = "torch"
    tensorrt = "tensorrt"


Precision = Enum("Precision", [(p, p) for p in formats.RUN_PRECISIONS], type=str)


class GroupBy(str, Enum):
    none = "none"
    parent = "parent"


ModelOpt = typer.Option(None, "--model", "-m", help="Model bundle folder (default: the embedded model).")
BackendOpt = typer.Option(BackendName.auto, "--backend", help="Inference backend.")
DeviceOpt = typer.Option("cpu", "--device", help="cpu, cuda[:N], or auto (a GPU when there is one).")
PrecisionOpt = typer.Option(None, "--precision", help="torch backend on CUDA: fp16/bf16 weights for the towers "
                            "(default: the bundle's own precision).")
GraphsOpt = typer.Option(False, "--cuda-graphs", help="torch backend on CUDA: replay CUDA graphs per batch size.")
CompileOpt = typer.Option(False, "--compile", help="torch backend: torch.compile (Inductor) with static batch "
                          "buckets; the first batch of each size compiles (cached on disk).")
BatchOpt = typer.Option(None, "--batch-size", "-b", min=1, help="Images per encoder batch (default: 2 for a "
                        "conv-stats model such as the embedded one on a CPU, where smaller batches stay in cache; "
                        "16 otherwise).")
FmtOpt = typer.Option(Fmt.table, "--format", "-f", help="Output format.")
CropsOpt = typer.Option(1, "--crops", min=1, help="1: the bundle's preprocessing (its resize/crop spec). K>1: K "
                        "aligned 224² crops at native resolution, same positions for every image; outputs averaged.")
FlipOpt = typer.Option(False, "--flip", help="Also encode each view mirrored and average (2× encoder work); "
                       "nothing to do for a model that mirrors by itself (model.json config mirror_views).")
# Image paths are not click-checked (readable=False): click would turn one unreadable image into a usage
# error that aborts the whole run; the decoder reports it as that input's own one-line error instead.


def _fail(msg: str, code: int = 2) -> None:
    err_console.print(f"error: {one_line(msg)}", markup=False)
    raise typer.Exit(code)


def _scorer(model, backend, device, batch_size, crops: int = 1, precision=None, cuda_graphs: bool = False,
            compile_: bool = False, flip: bool = False):
    from .scorer import Scorer

    return Scorer(model, backend=backend.value if isinstance(backend, Enum) else backend,
                  device=device, batch_size=batch_size, crops=crops,
                  precision=precision.value if isinstance(precision, Enum) else precision, cuda_graphs=cuda_graphs,
                  compile=compile_, flip=flip)


def _run_encode(scorer, paths: list, label: str, features_only: bool = False):
    """Encode all paths with a progress bar; returns (encoded ok list, error dicts)."""
    ok, errors = [], []
    bar = progress(len(paths), label)
    with bar as p:
        task = p.add_task(label, total=len(paths)) if p is not None else None
        for enc in scorer.iter_encode(paths, names=[display_path(x) for x in paths], features_only=features_only):
            if enc.error is None:
                ok.append(enc)
            else:
                errors.append({"path": enc.name, "error": enc.error})
            if p is not None:
                p.advance(task)
    return ok, errors


@app.command(cls=_Command)
def score(
    images: List[Path] = typer.Argument(..., help="Image files.", show_default=False, readable=False),
    model: Optional[Path] = ModelOpt, backend: BackendName = BackendOpt, device: str = DeviceOpt,
    batch_size: Optional[int] = BatchOpt, fmt: Fmt = FmtOpt, crops: int = CropsOpt, flip: bool = FlipOpt,
    precision: Optional[Precision] = PrecisionOpt, cuda_graphs: bool = GraphsOpt, compile_: bool = CompileOpt,
):
    """Score each image: quality in (0, 1), higher is better."""
    try:
        scorer = _scorer(model, backend, device, batch_size, crops, precision, cuda_graphs, compile_, flip)
        ok, errors = _run_encode(scorer, images, "scoring")
    except FGResQError as exc:
        _fail(str(exc))
    results = [{"path": e.name, "score": e.score} for e in ok]
    if fmt is Fmt.json:
        emit_json({"results": results, "errors": errors})
    elif fmt is Fmt.csv:
        emit_csv(["path", "score"], [[r["path"], r["score"]] for r in results])
    else:
        emit_table(None, ["path", "score"], [[r["path"], r["score"]] for r in results])
    report_errors(errors)
    raise typer.Exit(1 if errors else 0)


@app.command(cls=_Command)
def compare(
    a: Path = typer.Argument(..., help="First image.", readable=False),
    b: Path = typer.Argument(..., help="Second image.", readable=False),
    model: Optional[Path] = ModelOpt, backend: BackendName = BackendOpt, device: str = DeviceOpt,
    fmt: Fmt = FmtOpt, crops: int = CropsOpt, flip: bool = FlipOpt, precision: Optional[Precision] = PrecisionOpt,
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a self-contained HTML page: both "
                                          "images side by side with a synchronised zoom, and the probabilities. "
                                          "Never written over an input; an existing other file is replaced."),
    raw: bool = typer.Option(False, "--raw", help="The head on (first, second) only, exactly as the authors' "
                             "predict_pair computes it. Default: both orders averaged, so swapping the images "
                             "swaps the answer and identical images are `similar` (what rank uses)."),
):
    """Compare two restored versions: P(first better), P(second better), P(similar quality).

    Verdict: `similar` when that is the most likely outcome or when neither image is preferred by more than
    0.02; otherwise the image with the larger probability."""
    from .verdict import PROB_KEYS  # numpy: not at the CLI's startup

    fields = ("a", "b", *PROB_KEYS, "verdict")
    if report is not None:
        _check_out(report, [a, b], "report")
    try:
        scorer = _scorer(model, backend, device, 2, crops, precision, flip=flip)
        ok, errors = _run_encode(scorer, [a, b], "comparing", features_only=True)  # compare reads no score
    except FGResQError as exc:
        _fail(str(exc))
    if errors:  # both inputs are reported when both are bad, not just the first
        # stdout still parses: the JSON object (no probabilities, the errors), or the CSV header.
        names = {"a": display_path(a), "b": display_path(b)}
        if fmt is Fmt.json:
            emit_json({**names, **dict.fromkeys(PROB_KEYS), "verdict": None, "errors": errors})
        elif fmt is Fmt.csv:
            emit_csv(list(fields), [])
        report_errors(errors)
        if report is not None:
            _write_compare_report(report, a, b, None, errors, scorer)
        raise typer.Exit(1)
    comparison = scorer.compare_features(display_path(a), display_path(b), ok[0].features, ok[1].features,
                                         raw=raw)
    res = comparison.to_dict()
    if fmt is Fmt.json:
        emit_json(res)
    elif fmt is Fmt.csv:
        emit_csv(list(fields), [[res[k] for k in fields]])
    else:
        emit_table(None, ["a", "b", "P(a better)", "P(b better)", "P(similar)", "verdict"],
                   [[res[k] for k in fields]])
    if report is not None:
        _write_compare_report(report, a, b, comparison, errors, scorer)


@app.command(cls=_Command)
def rank(
    directory: Path = typer.Argument(..., help="Folder of restored images.", readable=False),
    model: Optional[Path] = ModelOpt, backend: BackendName = BackendOpt, device: str = DeviceOpt,
    batch_size: Optional[int] = BatchOpt,
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Include sub-folders."),
    group_by: GroupBy = typer.Option(GroupBy.none, "--group-by",
                                     help="parent: rank each sub-folder separately (implies --recursive)."),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="Show only the best K of each group."),
    fmt: Fmt = FmtOpt, crops: int = CropsOpt, flip: bool = FlipOpt,
    precision: Optional[Precision] = PrecisionOpt, cuda_graphs: bool = GraphsOpt, compile_: bool = CompileOpt,
    report: Optional[Path] = typer.Option(None, "--report", help="Also write a self-contained HTML report: "
                                          "thumbnails best-first, scores, tiers and the pairwise heat map of "
                                          "each group. Never written over an input; an existing other file "
                                          "is replaced."),
    contact_sheet: Optional[Path] = typer.Option(None, "--contact-sheet", help="Also write one image with every "
                                                 "group's images in rank order, labelled with rank, score and "
                                                 "file name. The format follows the suffix (.png, .jpg, .webp, "
                                                 ".tif, .bmp; PNG without one)."),
):
    """Rank the images of a folder best-first (each sub-folder separately with --group-by parent)."""
    from .scorer import collect_images

    if not directory.exists():
        _fail(f"{display_path(directory)}: no such directory")
    if not directory.is_dir():
        _fail(f"{display_path(directory)}: not a directory")
    recursive = recursive or group_by is GroupBy.parent
    files, walk_problems = collect_images(directory, recursive)
    errors = [{"path": p, "error": why} for p, why in walk_problems]
    if report is not None and contact_sheet is not None and report.resolve() == contact_sheet.resolve():
        _fail(f"{display_path(report)}: --report and --contact-sheet name the same file")
    for out, what in ((report, "report"), (contact_sheet, "contact sheet")):
        if out is not None:
            _check_out(out, files, what)
    if contact_sheet is not None:
        _check_sheet_format(contact_sheet)
    if not files:
        # Still the usual (empty) output, so a script reading stdout gets parseable JSON or CSV.
        errors.append({"path": display_path(directory),
                       "error": "no images found" + ("" if recursive else " (try --recursive)")})
        _emit_rank(fmt, [], errors)
        _write_rank_outputs(report, contact_sheet, [], errors, None, top, directory)
        raise typer.Exit(1)
    groups = _group_files(directory, files, group_by)
    limit, budget = max_rank_group(report is not None)
    big = [k for k, v in groups.items() if len(v) > limit]
    if big:
        _fail(f"group {big[0]} has {len(groups[big[0]])} images; all-pairs ranking fits at most {limit} per group "
              f"in half of the available memory ({budget / 2**30:.1f} GiB) here (use --group-by parent, or "
              "`score` for plain scores)")
    try:
        scorer = _scorer(model, backend, device, batch_size, crops, precision, cuda_graphs, compile_, flip)
        ok, enc_errors = _run_encode(scorer, files, "ranking")
    except FGResQError as exc:
        _fail(str(exc))
    errors += enc_errors
    # By input index, not by printed name: two files can print alike (non-UTF-8 bytes vs a literal "\xe9").
    by_index = {e.index: e for e in ok}
    out_groups = []
    ranked = []  # (group name, RankResult, input paths) for --report / --contact-sheet
    import numpy as np

    for gname, members in groups.items():
        encs = [by_index[i] for i in members if i in by_index]
        if not encs:
            continue
        res = scorer.rank_features([e.name for e in encs], np.stack([e.features for e in encs]),
                                   np.asarray([e.score for e in encs]))
        entries = res.entries(top)
        if len(encs) == 1:  # nothing to win against: no win rate (null / "-"), whatever the library says
            for e in entries:
                e["win_rate"] = None
        out_groups.append({"name": gname, "ranking": entries, "n": len(encs)})
        if report is not None or contact_sheet is not None:
            ranked.append((gname, res, [files[e.index] for e in encs]))
    _emit_rank(fmt, out_groups, errors)
    _write_rank_outputs(report, contact_sheet, ranked, errors, scorer, top, directory)
    raise typer.Exit(1 if errors else 0)


def _check_out(out: Path, inputs: list, what: str) -> None:
    """Usage error (exit 2) before any work when an output path is unusable (an input, a folder…)."""
    from .report import check_output_path

    try:
        check_output_path(out, inputs, what)
    except FGResQError as exc:
        _fail(str(exc))


def _check_sheet_format(sheet: Path) -> None:
    """Usage error (exit 2) before any work when the contact sheet's suffix names no format we write."""
    from .contact_sheet import sheet_format

    try:
        sheet_format(sheet)
    except FGResQError as exc:
        _fail(str(exc))


def _write_rank_outputs(report, sheet, ranked, errors, scorer, top, directory) -> None:
    """Write --report / --contact-sheet (also when some inputs failed: the report lists them)."""
    if report is None and sheet is None:
        return
    from .report import RankGroup, model_meta, write_rank_report

    groups = [RankGroup(name, res, paths) for name, res, paths in ranked]
    writing = "report"
    try:
        if report is not None:
            n = sum(len(g.shown(top)) for g in groups)
            with progress(n, "report") as p:
                task = p.add_task("report", total=n) if p else None
                write_rank_report(report, groups, errors, model_meta(scorer) if scorer else {}, top=top,
                                  subtitle=f"fgresq-sdk rank {display_path(directory)}",
                                  progress=(lambda: p.advance(task)) if p else None)
            err_console.print(f"wrote report {display_path(report)}", markup=False)
        if sheet is not None:
            from .contact_sheet import plan, write_contact_sheet

            writing = "sheet"
            n = sum(len(p) for p in plan(groups, top))
            with progress(n, "contact sheet") as p:
                task = p.add_task("contact sheet", total=n) if p else None
                write_contact_sheet(sheet, groups, top=top, progress=(lambda: p.advance(task)) if p else None)
            err_console.print(f"wrote contact sheet {display_path(sheet)}", markup=False)
    except FGResQError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {display_path(exc.filename or (sheet if writing == 'sheet' else report))} "
              f"({exc.strerror or exc})")


def _write_compare_report(report, a, b, comparison, errors, scorer) -> None:
    from .report import model_meta, write_compare_report

    try:
        write_compare_report(report, a, b, comparison, errors, model_meta(scorer),
                             names=(display_path(a), display_path(b)))
    except FGResQError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {display_path(report)} ({exc.strerror or exc})")
    err_console.print(f"wrote report {display_path(report)}", markup=False)


def _group_files(directory: Path, files: list[Path], group_by: GroupBy) -> dict[str, list[int]]:
    """Group name → indices into files (the whole folder, or one group per parent folder)."""
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        key = display_path(directory) if group_by is GroupBy.none else display_path(f.parent.relative_to(directory))
        groups.setdefault(key, []).append(i)
    return groups


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _emit_rank(fmt: Fmt, out_groups: list[dict], errors: list[dict]) -> None:
    """Print the ranking in the chosen format on stdout, then one line per error on stderr.

    out_groups: {"name", "ranking", "n"} with n the number of images ranked in the group (failed inputs
    are not counted; they are the errors). Nothing ranked: no table at all, the errors say why."""
    if fmt is Fmt.json:
        emit_json({"groups": [{"name": g["name"], "ranking": g["ranking"]} for g in out_groups], "errors": errors})
    elif fmt is Fmt.csv:
        emit_csv(["group", "rank", "path", "score", "win_rate", "tier"],
                 [[g["name"], r["rank"], r["path"], r["score"], r["win_rate"], r["tier"]]
                  for g in out_groups for r in g["ranking"]])
    else:
        for g in out_groups:
            emit_table(f"{g['name']} ({_count(g['n'], 'image')})", ["rank", "path", "score", "win rate", "tier"],
                       [[r["rank"], r["path"], r["score"], r["win_rate"], r["tier"]] for r in g["ranking"]])
    report_errors(errors)


# `export --format`: the formats table's exported rows (fgresq_sdk/formats.py).
ExportFormat = Enum("ExportFormat", [(f.name.replace("-", "_"), f.name) for f in formats.EXPORT_FORMATS], type=str)


def _is_bundle(path: Path) -> bool:
    from .bundle import MANIFEST

    return path.is_dir() and (path / MANIFEST).is_file()


def _build(fmt: "formats.Format", src: Path, out: Path, options: dict, force: bool) -> Path:
    """Run the format's builder on `src` with the export options that apply to it; a format built from a bundle
    that was given a checkpoint is built from a temporary fp32 bundle exported first."""
    import tempfile

    kwargs = {k: options[k] for k in fmt.options}
    if not fmt.via_fp32 or _is_bundle(src):
        return fmt.load_builder()(src, out, force=force, **kwargs)
    with tempfile.TemporaryDirectory(prefix="fgresq-export-") as td:
        fp32 = _build(formats.DEFAULT_EXPORT, src, Path(td) / "fp32", options, force=False)
        return fmt.load_builder()(fp32, out, force=force, **kwargs)


def _require_for(fmt: "formats.Format", src: Path, precision: str | None) -> None:
    """Usage error naming the extra when a module the build needs is missing, before any work."""
    what = "export" if fmt is formats.DEFAULT_EXPORT else f"export --format {fmt.name}"
    if fmt.via_fp32 and not _is_bundle(src):
        first = formats.DEFAULT_EXPORT
        _require(f"{what} from a checkpoint", first.extra, first.build_modules())
    if fmt.extra is not None:
        _require(what, fmt.extra, fmt.build_modules(precision))


@app.command("export", cls=_Command)
def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c",
                                    help="Our .safetensors checkpoint, or a bundle (with a checkpoint for "
                                         f"{formats.DEFAULT_EXPORT.name})."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write."),
    fmt: ExportFormat = typer.Option(formats.DEFAULT_EXPORT.name, "--format", help=formats.export_help()),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    fp16: bool = typer.Option(True, "--fp16/--fp32", help=f"{formats.owners('fp16')}: build an FP16 engine "
                              "(default) or FP32."),
    batch: str = typer.Option("1,8,32", "--batch", help=f"{formats.owners('batch')}: optimisation profile "
                              "MIN,OPT,MAX batch."),
    workspace_gb: float = typer.Option(4.0, "--workspace-gb", help=f"{formats.owners('workspace_gb')}: builder "
                                       "workspace limit (GiB)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help=f"{formats.owners('timing_cache')}: "
                                                "timing cache file, reused and updated across builds."),
    device: str = typer.Option("cuda", "--device", help=f"{formats.owners('device')}: GPU to build on."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help=f"{formats.owners('calibration')}: a "
                                               "folder of photos (the first 24 by name) to validate int8 against "
                                               "fp32 on and choose which attention weights stay fp32 (default: "
                                               "synthetic photos, which understate the error on real ones); the "
                                               "result, this CPU and the photos' source go into model.json."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output folder."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1, help=f"{formats.owners('max_batch_size')}: "
                                       "max_batch_size of the generated Triton configs."),
):
    """Export a checkpoint to a model bundle (ONNX encoder + comparison head + manifest), or derive an
    int8 / fp16 / TensorRT bundle from an fp32 one, or write a Triton model repository from a bundle."""
    spec = formats.BY_NAME[ExportFormat(fmt).value]
    if calibration is not None and "calibration" not in spec.options:
        _fail(f"--calibration applies to --format {formats.owners('calibration')} only")
    _require_for(spec, checkpoint, formats.FP16 if fp16 else formats.FP32)
    options = {"opset": opset, "fp16": fp16, "batch": batch, "workspace_gb": workspace_gb,
               "timing_cache": timing_cache, "device": device, "calibration": calibration,
               "max_batch_size": max_batch_size, "log": lambda m: err_console.print(m, markup=False)}
    try:
        path = _build(spec, checkpoint, out, options, force)
    except ImportError as exc:  # a dependency of an extra that is installed but broken
        extra = spec.extra or formats.DEFAULT_EXPORT.extra
        _fail(f"export needs the {extra} extra: pip install 'fgresq-sdk[{extra}]' ({exc})")
    except FGResQError as exc:
        _fail(str(exc))
    err_console.print(f"wrote {spec.wrote} {display_path(path)}", markup=False)


def _not_a_torch_file(path: Path) -> str | None:
    """Why `path` cannot be a file written by torch.save (None when it may be one), without torch: torch.save
    writes a zip archive (torch ≥ 1.6) or, in the legacy format, a pickle (first byte 0x80) or a tar."""
    import tarfile

    if not path.exists():
        return "checkpoint not found"
    if path.is_dir():
        return "is a directory, not a PyTorch checkpoint file"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or tarfile.is_tarfile(path):
            return None
    except OSError as exc:
        return f"cannot read ({exc.strerror or exc})"
    return "not a PyTorch checkpoint file (expected a .pth written by torch.save, like the released FGResQ.pth)"


@app.command("import-official", cls=_Command)
def import_official_cmd(
    checkpoint: Path = typer.Argument(..., help="The released FGResQ.pth."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write."),
    degradation: Optional[Path] = typer.Option(None, "--degradation", help="Optional Degradation.pth."),
    config: str = typer.Option("fgresq-vit-b16", "--config", help="Model config name or JSON path."),
    compare_order: str = typer.Option("released", "--compare-order",
                                      help="released: read the stored comparison logits as the authors' latest "
                                           "inference code does (second better, first better, similar); "
                                           "stored: take them as (first, second, similar)."),
    preprocess: str = typer.Option("official", "--preprocess",
                                   help="official: as the authors' current inference code (OpenCV bilinear "
                                        "resize to 256×256, center crop 224); squash: resize to 224×224 with "
                                        "antialiasing (earlier SDK behaviour)."),
    score_scale: float = typer.Option(0.3, "--score-scale", help="k in score = sigmoid(k·head(q)); the current "
                                      "release uses 0.3, earlier releases 1.0."),
    force: bool = typer.Option(False, "--force", help="Replace a bundle folder."),
):
    """Convert the released FGResQ.pth (or FGResQ_v2.pth) into a complete model bundle usable by every backend.

    Defaults reproduce the authors' current release; the options select earlier behaviour."""
    if preprocess not in ("official", "squash"):
        _fail(f"unknown --preprocess '{preprocess}' (choose from: official, squash)")
    if compare_order not in ("released", "stored"):
        _fail(f"unknown --compare-order '{compare_order}' (choose from: released, stored)")
    if not 0 < score_scale < float("inf"):
        _fail(f"--score-scale must be a positive number (got {score_scale})")
    for path in (checkpoint, degradation):
        why = None if path is None else _not_a_torch_file(path)
        if why:
            _fail(f"{display_path(path)}: {why}")
    _require("import-official", "export", EXPORT_MODULES)
    try:
        from .export.official_import import import_official

        path = import_official(checkpoint, out, config=config, degradation=degradation,
                               compare_order=compare_order, preprocess=preprocess, score_scale=score_scale,
                               force=force)
        from .export.official_import import release_behaviour

        behaviour = release_behaviour(preprocess, score_scale, compare_order)
    except ImportError as exc:  # a dependency of the extra that is installed but broken
        _fail(f"import-official needs the export extra: pip install 'fgresq-sdk[export]' ({exc})")
    except FGResQError as exc:
        _fail(str(exc))
    err_console.print(f"wrote bundle {display_path(path)}", markup=False)
    err_console.print(f"the bundle {behaviour}", markup=False)


@app.command("eval", cls=_Command)
def eval_cmd(
    manifest: Path = typer.Option(..., "--manifest", help="FGRestore-style manifest folder (see README)."),
    model: Optional[Path] = ModelOpt, backend: BackendName = BackendOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for eval.json, eval.md and the rows behind them (eval-images.csv, eval-pairs.csv, eval-junk.csv)."),
    crops: int = CropsOpt, flip: bool = FlipOpt,
    baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                   help="Also PSNR/SSIM and the no-reference baselines (they do not depend on the "
                                        "model; leaving them out more than halves the time)."),
):
    """Paper-style evaluation (Table 3 per task SRCC/PLCC/ACC, Table 2 ranges) with PSNR/SSIM and no-reference
    (Laplacian variance, NIQE-style) baselines."""
    _require("eval", "train", EVAL_MODULES)  # scipy (metrics) and scikit-image (PSNR/SSIM baselines)
    try:
        from .train.evaluate import eval_main
    except ImportError as exc:
        _fail(f"eval needs the train extra: pip install 'fgresq-sdk[train]' ({exc})")
    try:
        eval_main(model, manifest, out, backend.value, crops=crops, flip=flip, baselines=baselines)
    except FGResQError as exc:
        _fail(str(exc))
    except (ValueError, FileNotFoundError) as exc:
        _fail(f"{display_path(manifest)}: {exc}")


def _register_train() -> None:
    """`train` lives in fgresq_sdk.train (torch needed only when it runs, not to list it or show its help)."""
    try:
        from .train.cli import train_cmd
    except ImportError:  # pragma: no cover - the train package ships with the SDK
        return

    @functools.wraps(train_cmd)  # typer reads the options from the wrapped signature
    def train(*args, **kwargs):
        _require("train", "train", TRAIN_MODULES)
        return train_cmd(*args, **kwargs)

    app.command("train", cls=_Command,
                help="Train FGResQ (stage 1 DFL, stage 2 quality heads) from a JSON config.")(train)


_register_train()


@app.command(cls=_Command)
def bench(
    model: Optional[Path] = ModelOpt,
    backend: str = typer.Option("onnxruntime,torch", "--backend",
                                help=f"Comma-separated: {', '.join(formats.BENCH_BACKENDS)}."),
    precision: str = typer.Option("fp32,int8", "--precision", help=f"Comma-separated: "
                                  f"{', '.join(formats.BENCH_PRECISIONS)} ({formats.derived_by_bench()})."),
    device: str = DeviceOpt,
    batch_sizes: str = typer.Option("1,8,32", "--batch-sizes", help="Comma-separated batch sizes."),
    images: int = typer.Option(64, "--images", min=1, help="Images for the end-to-end pass."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed runs per batch size."),
    rank_sizes: str = typer.Option("", "--rank-sizes", help="Also time rank vs the per-pair baseline at these N "
                                                            "(e.g. 8,32,128; needs torch and a bundle with a "
                                                            "checkpoint)."),
    fmt: Fmt = typer.Option(Fmt.table, "--format", "-f", help="Output format."),
):
    """Latency/throughput per backend × precision × batch size, with accuracy vs the fp32 torch model.

    A variant that cannot run here (torch on an ONNX-only bundle, an extra that is not installed) is
    skipped with one line on stderr; the others are still measured. Exit 1 when no variant could run."""
    from .bench import CSV_HEADER, run_bench, table_rows, variants

    def ints(text: str, option: str, least: int) -> list[int]:
        try:
            vals = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            vals = None
        if vals is None or any(v < least for v in vals):
            _fail(f"{option}: expected comma-separated integers of at least {least}, got '{text}'")
        return vals

    def names(text: str, option: str, known: tuple[str, ...]) -> list[str]:
        vals = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
        bad = [v for v in vals if v not in known]
        if bad or not vals:
            _fail(f"{option}: unknown value '{bad[0] if bad else text}' (choose from: {', '.join(known)})")
        return vals

    backends = names(backend, "--backend", formats.BENCH_BACKENDS)
    precisions = names(precision, "--precision", formats.BENCH_PRECISIONS)
    sizes = ints(batch_sizes, "--batch-sizes", 1)
    if not sizes:
        _fail(f"--batch-sizes: expected comma-separated integers of at least 1, got '{batch_sizes}'")
    ranks = ints(rank_sizes, "--rank-sizes", 2)
    try:
        result = run_bench(model, variants(backends, precisions, device), sizes, n_images=images, repeats=repeats,
                           rank_sizes=ranks, log=lambda m: err_console.print(m, markup=False))
    except FGResQError as exc:
        _fail(str(exc))
    if fmt is Fmt.json:
        emit_json(result)
    elif fmt is Fmt.csv:
        emit_csv(CSV_HEADER, table_rows(result))
    else:  # header (CPU, ISA, versions, threads) + a plain table that fits 80 columns
        from .bench import report_lines

        sys.stdout.write("".join(line + "\n" for line in report_lines(result)))
    if fmt is not Fmt.json:
        for row in result.get("rank_vs_per_pair", []):
            err_console.print(f"rank N={row['n_images']}: {row['rank_s']:.3f} s vs per-pair baseline "
                              f"{row['per_pair_baseline_s']:.2f} s ({row['speedup']:.0f}×"
                              f"{', baseline extrapolated' if row['extrapolated'] else ''})", markup=False)
    if not result["results"]:
        err_console.print("error: no variant could run here (see the skipped lines above)", markup=False)
        raise typer.Exit(1)


@app.command(cls=_Command)
def info(
    model: Optional[Path] = ModelOpt, backend: BackendName = BackendOpt, device: str = DeviceOpt,
    fmt: Fmt = FmtOpt,
):
    """Model, config, backend, providers and library versions."""
    import importlib.metadata as md
    import platform

    import onnxruntime as ort

    from . import __version__
    from .backends.probe import importable

    def ver(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    payload = {"fgresq_sdk": __version__, "python": platform.python_version(),
               "onnxruntime": ort.__version__, "onnxruntime_providers": ort.get_available_providers(),
               "torch": ver("torch") if importable("torch") else None,
               "open_clip": ver("open_clip_torch"), "tensorrt": ver("tensorrt"),
               "numpy": ver("numpy"), "pillow": ver("pillow"),
               # what `export --format` can build from a bundle with the packages installed here
               "export_formats": [f.name for f in formats.EXPORT_FORMATS if all(map(importable, f.build_modules()))]}
    try:
        scorer = _scorer(model, backend, device, 1)
        payload.update(scorer.describe())
    except FGResQError as exc:
        payload["model_error"] = str(exc)
    if fmt is Fmt.json:
        emit_json(payload)
    elif fmt is Fmt.csv:
        emit_csv(["key", "value"], _flat_rows(payload))
    else:
        emit_table(None, ["key", "value"], _flat_rows(payload))


# -- serving and batch scoring (optional extras: serve, batch / ray) ---------------------------------------
SERVE_MODULES = ("pytriton",)
BATCH_MODULES = ("pyarrow",)
RAY_MODULES = ("pyarrow", "ray")


@app.command(cls=_Command)
def serve(
    model: Optional[Path] = ModelOpt, backend: BackendName = BackendOpt, device: str = DeviceOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    http_port: int = typer.Option(8000, "--http-port", min=1, max=65535, help="HTTP (KServe v2) port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", min=1, max=65535, help="gRPC (KServe v2) port."),
    metrics_port: int = typer.Option(8002, "--metrics-port", min=1, max=65535, help="Prometheus metrics port."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", min=1, help="Largest batch dynamic batching forms."),
    max_queue_delay_us: int = typer.Option(2000, "--max-queue-delay-us", min=0,
                                           help="How long a request may wait for others to batch with (µs)."),
    instances: int = typer.Option(1, "--instances", min=1, help="Model instances (concurrent batches)."),
):
    """Serve the model with Triton Inference Server (KServe v2 HTTP/gRPC, dynamic batching, metrics).

    Model `fgresq`: input `image` (BYTES, one encoded image file per item) → `score`, `features`, `error`.
    Model `fgresq_info`: the bundle's identity and comparison head, for clients that compare and rank
    (fgresq_sdk.client.RemoteScorer). Runs until SIGTERM or Ctrl-C."""
    _require("serve", "serve", SERVE_MODULES)
    try:
        from .serve.server import ServeOptions, main_log, serve as run_serve

        scorer = _scorer(model, backend, device, max_batch_size)
        opts = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                            max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                            instances=instances)
        run_serve(scorer, opts, log=main_log)
    except ImportError as exc:  # the extra is installed but broken (e.g. numpy ≥ 2 under PyTriton's pin)
        _fail(f"serve needs the serve extra: pip install 'fgresq-sdk[serve]' ({exc})")
    except FGResQError as exc:
        _fail(str(exc))


class BatchEngine(str, Enum):
    local = "local"
    ray = "ray"


@app.command("batch", cls=_Command)
def batch_cmd(
    source: Path = typer.Argument(..., help="A folder (searched recursively), a text file of paths (one per line) "
                                  "or a Parquet file with a `path` column.", readable=False),
    out: Path = typer.Option(..., "--out", "-o", help="Parquet dataset folder to write (path, score, error "
                             "[, features]; one row per input)."),
    engine: BatchEngine = typer.Option(BatchEngine.local, "--engine", help="local: this process; ray: Ray Data."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="ray: the cluster to join (e.g. "
                                              "ray://head:10001, or auto); default: a local Ray on this machine."),
    actors: Optional[int] = typer.Option(None, "--actors", min=1, help="ray: scoring actors (default: one per "
                                         "4 CPUs, or per --gpus-per-actor share of the GPUs)."),
    cpus_per_actor: Optional[float] = typer.Option(None, "--cpus-per-actor", min=0.01, help="ray: CPUs per actor "
                                                   "(ONNX Runtime threads follow; default: the CPUs shared out)."),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", min=0.0, help="ray: GPUs per actor (> 0: GPU "
                                         "actors on cuda)."),
    object_store_mb: Optional[int] = typer.Option(None, "--object-store-mb", min=75, help="ray: object store "
                                                  "size of the local Ray started here (MiB)."),
    batch_size: Optional[int] = BatchOpt,
    model: Optional[Path] = ModelOpt, backend: BackendName = BackendOpt, device: str = DeviceOpt,
    with_features: bool = typer.Option(False, "--with-features", help="Also write the quality features q."),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT: skip the paths it already holds."),
):
    """Score many images into Parquet, on this machine or on a Ray cluster.

    A file that cannot be read or decoded is an error row; the others are still scored. Exit 1 when some
    rows are errors. Rows are written in whole Parquet parts, so an interrupted run keeps what it wrote
    (and Ctrl-C/SIGTERM write what was scored first): run again with --resume."""
    if engine is BatchEngine.ray:
        _require("batch --engine ray", "ray", RAY_MODULES)
    else:
        _require("batch", "batch", BATCH_MODULES)
    try:
        from .batch import BatchOptions, run_batch

        opts = BatchOptions(model=None if model is None else str(model), backend=backend.value, device=device,
                            batch_size=batch_size, with_features=with_features, resume=resume,
                            engine=engine.value, ray_address=ray_address, actors=actors,
                            cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                            object_store_mb=object_store_mb)
        res = run_batch(source, out, opts, log=lambda m: err_console.print(m, markup=False))
    except ImportError as exc:
        extra = "ray" if engine is BatchEngine.ray else "batch"
        _fail(f"batch needs the {extra} extra: pip install 'fgresq-sdk[{extra}]' ({exc})")
    except FGResQError as exc:
        _fail(str(exc))
    except Exception as exc:  # a Ray cluster failure (unreachable address, actors that cannot start…)
        if engine is not BatchEngine.ray:
            raise
        _fail(f"ray: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}")
    rate = res.rows / res.seconds if res.seconds > 0 else 0.0
    err_console.print(f"wrote {_count(res.rows, 'row')} ({_count(res.errors, 'error')}) to {display_path(out)} "
                      f"in {res.seconds:.1f} s ({rate:.1f} images/s, engine {res.engine})"
                      + (f"; {res.skipped} already there" if res.skipped else ""), markup=False)
    raise typer.Exit(1 if res.errors else 0)


def _flat_rows(payload: dict, prefix: str = "") -> list[list]:
    """Nested dicts as dotted keys ("model.name"), lists joined with "; ", None as a missing value."""
    rows = []
    for k, v in payload.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _flat_rows(v, key + ".") if v else [[key, None]]
        elif isinstance(v, (list, tuple)):
            rows.append([key, "; ".join(str(x) for x in v)])
        elif isinstance(v, bool):
            rows.append([key, "true" if v else "false"])
        else:
            rows.append([key, v])
    return rows


def _quiet_libraries() -> None:
    """Keep stderr to our one-line messages: PIL warns (corrupt EXIF…) and logs (odd TIFF headers) on
    its own for files we already report or decode fine. `python -W` / PYTHONWARNINGS still win."""
    if not sys.warnoptions:
        warnings.simplefilter("ignore")
    logging.getLogger("PIL").addHandler(logging.NullHandler())


def main() -> None:
    """Console-script entry point."""
    _quiet_libraries()
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
