"""`fgresq-sdk batch`: score a folder, a list of paths or a Parquet column of paths into a Parquet dataset,
on this machine (`local`: one `Scorer`, streaming) or on a Ray cluster (`ray`: Ray Data, one `Scorer` per
actor of an actor pool).

Output: OUT is a Parquet dataset folder (what Spark, Ray, pandas, DuckDB and pyarrow read by folder name)
of `part-*.parquet` files with columns `path` (string), `score` (float32, null when the input failed),
`error` (string, null when it succeeded) and, with --with-features, `features` (list<float32>, the quality
features q), one row per input. A file that cannot be read or decoded is an error row; it never fails the
job or drops the other rows. `_fgresq_batch.json` records the model and columns.

Parts are written whole (to a hidden name, then renamed), at most every `flush_rows` rows or `flush_s`
seconds, so a crash, SIGTERM or Ctrl-C loses at most the rows not yet flushed (Ctrl-C and SIGTERM flush
them first). `--resume` reads the `path` column of the parts already there and scores only the rest.
With the Ray engine the rows stream back to this process, which writes the parts: the same layout and the
same crash safety as the local engine.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import FGResQError, display_path

MARKER = "_fgresq_batch.json"
PART_RE = re.compile(r"^part-[0-9a-z]+-\d{5,}\.parquet$")
FORMAT = "fgresq-batch"
FLUSH_ROWS = 1000
FLUSH_S = 30.0


class BatchError(FGResQError):
    """A batch job cannot start or continue (bad source, an output folder that is not ours…)."""


# -- sources ---------------------------------------------------------------------------------------------
@dataclass
class Source:
    """Inputs in order: (printed path, file system path as bytes); `problems`: (path, reason) rows found while
    listing (a broken symlink, an unreadable folder)."""

    items: list[tuple[str, bytes]] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)


def _is_parquet(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


def read_source(source: str | os.PathLike) -> Source:
    """A folder (recursive), a Parquet file with a `path` column, or a text file of paths (one per line,
    blank lines skipped; relative paths are relative to the current folder)."""
    src = Path(source)
    shown = display_path(src)
    if not src.exists():
        raise BatchError(f"{shown}: no such file or folder")
    if src.is_dir():
        from .scorer import collect_images

        files, problems = collect_images(src, recursive=True)
        return Source([(display_path(p), os.fsencode(p)) for p in files], list(problems))
    if _is_parquet(src):
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(src)
            if "path" not in schema.names:
                raise BatchError(f"{shown}: Parquet file has no `path` column (columns: {', '.join(schema.names)})")
            col = pq.read_table(src, columns=["path"]).column("path")
        except BatchError:
            raise
        except Exception as exc:
            raise BatchError(f"{shown}: cannot read Parquet ({type(exc).__name__}: {exc})") from None
        out = Source()
        for v in col.to_pylist():
            if v is None:
                continue
            if isinstance(v, bytes):
                out.items.append((display_path(v), v))
            else:
                out.items.append((str(v), os.fsencode(str(v))))
        return out
    try:
        raw = src.read_bytes()
    except OSError as exc:
        raise BatchError(f"{shown}: cannot read ({exc.strerror})") from None
    if b"\x00" in raw[:4096]:
        raise BatchError(f"{shown}: not a folder, a Parquet file or a text file of paths")
    out = Source()
    for line in raw.split(b"\n"):
        line = line.rstrip(b"\r")
        if line.strip():
            out.items.append((display_path(line), line))
    return out


# -- the output dataset ----------------------------------------------------------------------------------
def output_schema(with_features: bool):
    import pyarrow as pa

    fields = [pa.field("path", pa.string()), pa.field("score", pa.float32()), pa.field("error", pa.string())]
    if with_features:
        fields.append(pa.field("features", pa.list_(pa.float32())))
    return pa.schema(fields)


def _model_record(bundle) -> dict[str, Any]:
    from .serve import bundle_identity

    ident = bundle_identity(bundle)
    return {"name": ident["name"], "files": {k: v["sha256"] for k, v in ident["files"].items()}}


def _same_model(a: dict, b: dict) -> bool:
    # The encoder and the heads decide scores and features; other files (checkpoint, engine) may differ.
    return all(a.get("files", {}).get(r) == b.get("files", {}).get(r) for r in ("encoder", "heads"))


def prepare_output(out: Path, *, resume: bool, with_features: bool, bundle) -> set[str]:
    """Check or create OUT; the printed paths already written (empty unless resuming)."""
    shown = display_path(out)
    record = {"format": FORMAT, "format_version": 1, "columns": output_schema(with_features).names,
              "with_features": with_features, "model": _model_record(bundle)}
    if out.exists() and not out.is_dir():
        raise BatchError(f"{shown}: exists and is not a folder (OUT is a Parquet dataset folder)")
    entries = sorted(os.listdir(out)) if out.is_dir() else []
    if not entries:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / MARKER, record)
        return set()
    if MARKER not in entries:
        raise BatchError(f"{shown}: folder is not empty and is not an fgresq-sdk batch output (no {MARKER}); "
                         "pass a new folder")
    if not resume:
        raise BatchError(f"{shown}: already holds batch results (pass --resume to continue it, or a new folder)")
    try:
        old = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BatchError(f"{shown}/{MARKER}: unreadable ({exc})") from None
    if old.get("format") != FORMAT:
        raise BatchError(f"{shown}/{MARKER}: not an fgresq-sdk batch record")
    if bool(old.get("with_features")) != with_features:
        raise BatchError(f"{shown}: was written {'with' if old.get('with_features') else 'without'} "
                         f"--with-features; resume it the same way")
    if not _same_model(old.get("model", {}), record["model"]):
        raise BatchError(f"{shown}: was written with model '{old.get('model', {}).get('name')}' (other encoder or "
                         f"heads than '{bundle.name}'); resume it with the same --model")
    for name in entries:  # parts a crash left half-written: never renamed into place, so never counted
        if name.startswith(".part-") and name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(out / name)
    return done_paths(out)


def done_paths(out: Path) -> set[str]:
    import pyarrow.parquet as pq

    done: set[str] = set()
    for name in sorted(os.listdir(out)):
        if not PART_RE.match(name):
            continue
        try:
            col = pq.read_table(out / name, columns=["path"]).column("path")
        except Exception as exc:
            raise BatchError(f"{display_path(out / name)}: unreadable part ({type(exc).__name__}: {exc}); "
                             "remove it and run again with --resume") from None
        done.update(v for v in col.to_pylist() if v is not None)
    return done


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class PartWriter:
    """Collects rows and writes them as whole Parquet parts (hidden name, fsync, rename)."""

    def __init__(self, out: Path, with_features: bool, flush_rows: int = FLUSH_ROWS, flush_s: float = FLUSH_S):
        self.out = Path(out)
        self.schema = output_schema(with_features)
        self.with_features = with_features
        self.flush_rows = max(1, int(flush_rows))
        self.flush_s = flush_s
        self.run_id = time.strftime("%Y%m%d%H%M%S").lower() + secrets.token_hex(3)
        self.seq = 0
        self.rows: dict[str, list] = {n: [] for n in self.schema.names}
        self.pending = 0
        self.written = 0
        self.errors = 0
        self.last_flush = time.monotonic()

    def add(self, path: str, score: float | None, error: str | None, features=None) -> None:
        self.rows["path"].append(path)
        self.rows["score"].append(None if score is None else float(score))
        self.rows["error"].append(error)
        if self.with_features:
            self.rows["features"].append(None if features is None else np.asarray(features, np.float32))
        self.pending += 1
        self.errors += error is not None
        if self.pending >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = dict(self.rows)
        if self.with_features:
            cols["features"] = [None if f is None else f.tolist() for f in cols["features"]]
        table = pa.table(cols, schema=self.schema)
        name = f"part-{self.run_id}-{self.seq:05d}.parquet"
        tmp = self.out / f".{name}.tmp"
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.out / name)
        self.seq += 1
        self.written += self.pending
        self.rows = {n: [] for n in self.schema.names}
        self.pending = 0
        self.last_flush = time.monotonic()


# -- progress --------------------------------------------------------------------------------------------
class Progress:
    """A progress bar on a terminal; elsewhere one stderr line every `every_s` seconds."""

    def __init__(self, total: int, label: str, log: Callable[[str], None], every_s: float = 10.0):
        self.total, self.label, self.log, self.every_s = total, label, log, every_s
        self.done = 0
        self.t0 = self.last = time.monotonic()
        self._bar = self._task = None
        from .output import err_console

        if err_console.is_terminal and total > 8:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn

            self._bar = RichProgress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                     console=err_console, transient=True)

    def __enter__(self):
        if self._bar is not None:
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            self.log(f"{self.label}: {self.done}/{self.total} images ({rate:.1f} images/s)")


# -- engines ---------------------------------------------------------------------------------------------
@dataclass
class BatchOptions:
    model: str | None = None
    backend: str = "auto"
    device: str = "cpu"
    batch_size: int | None = None  # images per encoder call (None: the Scorer's default_batch_size)
    with_features: bool = False
    resume: bool = False
    engine: str = "local"
    # ray
    ray_address: str | None = None
    actors: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    object_store_mb: int | None = None
    # output
    flush_rows: int = FLUSH_ROWS
    flush_s: float = FLUSH_S


@dataclass
class BatchResult:
    rows: int  # rows written by this run
    errors: int  # error rows written by this run
    skipped: int  # inputs already in OUT (--resume)
    seconds: float
    engine: str
    details: dict = field(default_factory=dict)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM behaves like Ctrl-C (the rows collected so far are flushed); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_batch(source: str | os.PathLike, out: str | os.PathLike, opts: BatchOptions,
              log: Callable[[str], None] = lambda m: None) -> BatchResult:
    """Score every input of `source` into the Parquet dataset `out` (see the module doc)."""
    from .bundle import default_bundle_path, load_bundle
    from .errors import BundleError

    out = Path(out)
    src = read_source(source)
    model = opts.model
    if model is None:
        model = default_bundle_path()
        if model is None:
            raise BundleError("no model given and this build has no embedded default model (pass --model DIR)")
    bundle = load_bundle(model)
    done = prepare_output(out, resume=opts.resume, with_features=opts.with_features, bundle=bundle)
    todo = [(p, fs) for p, fs in src.items if p not in done]
    problems = [(p, why) for p, why in src.problems if p not in done]
    skipped = len(src.items) + len(src.problems) - len(todo) - len(problems)
    if skipped:
        log(f"resuming: {skipped} inputs already in {display_path(out)}, {len(todo) + len(problems)} to go")
    writer = PartWriter(out, opts.with_features, opts.flush_rows, opts.flush_s)
    t0 = time.monotonic()
    details: dict = {}
    try:
        with _sigterm_as_interrupt():
            for p, why in problems:
                writer.add(p, None, why)
            if todo:
                if opts.engine == "local":
                    _run_local(todo, writer, bundle, opts, log)
                elif opts.engine == "ray":
                    details = _run_ray(todo, writer, str(bundle.root), opts, log)
                else:
                    raise BatchError(f"unknown engine '{opts.engine}' (choose from: local, ray)")
    finally:
        writer.flush()  # also on Ctrl-C / SIGTERM / an engine failure: what was scored is kept
    return BatchResult(writer.written, writer.errors, skipped, time.monotonic() - t0, opts.engine, details)


def _run_local(todo, writer: PartWriter, bundle, opts: BatchOptions, log) -> None:
    from .scorer import Scorer

    scorer = Scorer(bundle, backend=opts.backend, device=opts.device, batch_size=opts.batch_size)
    paths = [Path(os.fsdecode(fs)) for _, fs in todo]
    names = [p for p, _ in todo]
    with Progress(len(todo), "scoring", log) as bar:
        for enc in scorer.iter_encode(paths, names=names):
            writer.add(enc.name, enc.score, enc.error, enc.features if opts.with_features else None)
            bar.advance()


# -- Ray -------------------------------------------------------------------------------------------------
class ScoreActor:
    """One `Scorer` per Ray actor; called with pyarrow batches, returns them with score columns added.

    Inputs: the `path_column` (read by the actor; the files must be reachable from the worker) or, when
    given, `bytes_column` (encoded image bytes, e.g. from `ray.data.read_binary_files`). A hidden `_file`
    binary column (the file system path as bytes, for names that are not UTF-8) wins over `path_column`
    and is dropped from the output."""

    def __init__(self, model: str | None, backend: str = "auto", device: str = "cpu", batch_size: int | None = None,
                 threads: int | None = None, with_features: bool = False, path_column: str = "path",
                 bytes_column: str | None = None):
        from .scorer import Scorer

        self.scorer = Scorer(model, backend=backend, device=device, batch_size=batch_size, threads=threads,
                             decode_workers=max(1, min(4, threads or 1)))
        self.with_features = with_features
        self.path_column = path_column
        self.bytes_column = bytes_column

    def __call__(self, batch):
        import pyarrow as pa

        n = batch.num_rows
        if self.bytes_column is not None:
            data = batch.column(self.bytes_column).to_pylist()
            inputs = [b if b is not None else b"" for b in data]
        elif "_file" in batch.column_names:
            inputs = [Path(os.fsdecode(b)) for b in batch.column("_file").to_pylist()]
        else:
            inputs = [Path(str(p)) for p in batch.column(self.path_column).to_pylist()]
        names = [str(p) for p in batch.column(self.path_column).to_pylist()] \
            if self.path_column in batch.column_names else [f"<row {i}>" for i in range(n)]
        scores: list = [None] * n
        errors: list = [None] * n
        feats: list = [None] * n
        for enc in self.scorer.iter_encode(inputs, names=names):
            if enc.error is None:
                scores[enc.index] = enc.score
                feats[enc.index] = enc.features.astype(np.float32).tolist()
            else:
                errors[enc.index] = enc.error
        if "_file" in batch.column_names:
            batch = batch.drop_columns(["_file"])
        batch = batch.append_column("score", pa.array(scores, pa.float32()))
        batch = batch.append_column("error", pa.array(errors, pa.string()))
        if self.with_features:
            batch = batch.append_column("features", pa.array(feats, pa.list_(pa.float32())))
        return batch


def actor_plan(cluster_cpus: float, cluster_gpus: float, actors: int | None, cpus_per_actor: float | None,
               gpus_per_actor: float) -> tuple[int, float, int]:
    """(actors, CPUs reserved per actor, ONNX Runtime threads per actor).

    Defaults: with GPUs per actor, one actor per share of the cluster's GPUs; else one per 4 CPUs. The actors
    share all CPUs but half of one, which stays free for the tasks of a user's read/write stages (on 2 cores,
    actors holding every CPU starve them). ORT threads = the actor's CPUs rounded up."""
    if actors is None:
        if gpus_per_actor > 0:
            actors = max(1, int(cluster_gpus // gpus_per_actor)) if cluster_gpus else 1
        else:
            actors = max(1, int(cluster_cpus // 4))
    if cpus_per_actor is None:
        cpus_per_actor = max(0.25, (cluster_cpus - 0.5) / actors)
        cpus_per_actor = math.floor(cpus_per_actor * 100) / 100
    threads = max(1, math.ceil(cpus_per_actor - 1e-9))
    return actors, float(cpus_per_actor), threads


def add_scores(ds, model: str | os.PathLike | None = None, *, path_column: str = "path",
               bytes_column: str | None = None, backend: str = "auto", device: str | None = None,
               batch_size: int | None = None, actors: int | None = None, cpus_per_actor: float | None = None,
               gpus_per_actor: float = 0.0, with_features: bool = False):
    """Add `score` (float32, null on failure), `error` (string) and optionally `features` columns to a
    `ray.data.Dataset` with a column of image paths (`path_column`) or of encoded image bytes
    (`bytes_column`). Lazy, like every Ray Data transform: nothing runs until the dataset is consumed.
    `batch_size`: images per encoder call in the actors (None: the Scorer's default); Ray hands each actor
    that many rows per call, at least DEFAULT_BATCH, so that a small encoder batch does not multiply Ray's
    per-call overhead.

    `model` must be a bundle folder every worker can read (None: the model embedded in the SDK). With
    `gpus_per_actor` > 0 the actors ask Ray for GPUs and run on `cuda` (unless `device` says otherwise).
    """
    import ray

    from .scorer import DEFAULT_BATCH

    resources = ray.cluster_resources()
    n_actors, cpus, threads = actor_plan(float(resources.get("CPU", 1)), float(resources.get("GPU", 0)),
                                         actors, cpus_per_actor, gpus_per_actor)
    if device is None:
        device = "cuda" if gpus_per_actor > 0 else "cpu"
    kwargs = {"model": None if model is None else str(model), "backend": backend, "device": device,
              "batch_size": batch_size, "threads": threads, "with_features": with_features,
              "path_column": path_column, "bytes_column": bytes_column}
    remote = {"num_cpus": cpus}
    if gpus_per_actor > 0:
        remote["num_gpus"] = gpus_per_actor
    return ds.map_batches(ScoreActor, fn_constructor_kwargs=kwargs, batch_size=max(batch_size or 0, DEFAULT_BATCH),
                          batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=n_actors),
                          zero_copy_batch=True, **remote)


def _run_ray(todo, writer: PartWriter, model: str, opts: BatchOptions, log) -> dict:
    import logging

    import pyarrow as pa
    import ray

    tmp = None
    if ray.is_initialized():
        started = False
    elif opts.ray_address:
        ray.init(address=opts.ray_address, logging_level=logging.ERROR, log_to_driver=False)
        started = True
    else:
        # A local Ray of our own: its session folder (logs, sockets, spill) lives in a folder we remove.
        tmp = tempfile.mkdtemp(prefix="fgresq-ray-")
        kwargs: dict = {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "_temp_dir": tmp,
                        "logging_level": logging.ERROR, "log_to_driver": False}
        if opts.object_store_mb:
            kwargs["object_store_memory"] = int(opts.object_store_mb) << 20
        ray.init(**kwargs)
        started = True
    try:
        # Progress lines are ours; Ray Data's INFO lines would repeat them (RAY_DATA_LOG_LEVEL still wins).
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
        logging.getLogger("ray.data").setLevel(os.environ["RAY_DATA_LOG_LEVEL"])
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # our own progress line, as for the local engine
        ctx.print_on_execution_start = False
        resources = ray.cluster_resources()
        n_actors, cpus, threads = actor_plan(float(resources.get("CPU", 1)), float(resources.get("GPU", 0)),
                                             opts.actors, opts.cpus_per_actor, opts.gpus_per_actor)
        log(f"ray: {n_actors} actor(s) × {cpus:g} CPU ({threads} ONNX Runtime thread(s))"
            + (f" × {opts.gpus_per_actor:g} GPU" if opts.gpus_per_actor else "")
            + f" on a cluster of {resources.get('CPU', 0):g} CPU / {resources.get('GPU', 0):g} GPU")
        table = pa.table({"path": [p for p, _ in todo], "_file": pa.array([fs for _, fs in todo], pa.binary())})
        # Blocks made here (no repartition: a shuffle stage would need CPUs the actors hold).
        blocks = min(len(todo), max(n_actors * 4, math.ceil(len(todo) / 1024)))
        step = math.ceil(len(todo) / blocks)
        ds = ray.data.from_arrow([table.slice(i, step) for i in range(0, len(todo), step)])
        ds = add_scores(ds, model, backend=opts.backend, device=opts.device if opts.gpus_per_actor == 0 else None,
                        batch_size=opts.batch_size, actors=n_actors, cpus_per_actor=cpus,
                        gpus_per_actor=opts.gpus_per_actor, with_features=opts.with_features)
        t_run = time.monotonic()
        with Progress(len(todo), "scoring (ray)", log) as bar:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                cols = batch.to_pydict()
                for i in range(batch.num_rows):
                    writer.add(cols["path"][i], cols["score"][i], cols["error"][i],
                               cols["features"][i] if opts.with_features else None)
                bar.advance(batch.num_rows)
        return {"actors": n_actors, "cpus_per_actor": cpus, "threads_per_actor": threads,
                "pipeline_s": time.monotonic() - t_run,  # actors starting + scoring, without Ray's own start
                "cluster": {"CPU": resources.get("CPU", 0), "GPU": resources.get("GPU", 0)}}
    finally:
        if started:
            ray.shutdown()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
