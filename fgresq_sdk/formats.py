"""The model formats and precisions: one table that everything else reads.

`export --format` takes its choices, help text, required extra and builder from here; `bench` takes its
variants (which backend runs which precision, and how the bundle for it is obtained) and its reference;
the backends take their precision lists; `info` lists what this install can export. A new format is one
new row (and its builder), nowhere else.

Torch-free on purpose: the CLI reads this table at start-up. Builders are named as "module:function"
strings and imported only when a format is built (`Format.load_builder`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

# Every precision name the SDK knows, in the order help text lists them.
FP32, FP16, BF16, INT8 = "fp32", "fp16", "bf16", "int8"
PRECISIONS = (FP32, FP16, BF16, INT8)

# Optional extras (pyproject.toml) → the modules a builder or backend imports from them.
TORCH_MODULES = ("torch", "torchvision", "open_clip", "safetensors")
EXPORT_MODULES = TORCH_MODULES + ("onnx",)

# What a builder reads.
CHECKPOINT_SOURCE = "checkpoint"  # a .safetensors checkpoint, or a bundle's checkpoint
BUNDLE_SOURCE = "bundle"  # a bundle (fp32 unless the builder says otherwise)

# How `bench` obtains the bundle for a row ("" = bench does not measure it).
BENCH_GIVEN = "given"  # the bundle bench was given, as it is
BENCH_DERIVED = "derived"  # built on the fly from the given fp32 bundle with the row's builder


@dataclass(frozen=True)
class Format:
    """One row: a model format, what it is made of and who builds, runs and measures it."""

    name: str  # the `export --format` argument (or, for a format export does not write, its table name)
    title: str
    help: str  # the phrase `export --format`'s help shows after the name
    files: str  # what it adds to (or makes of) a bundle folder
    devices: str  # where its backend runs it
    precision: str | None  # the bundle's `precision` (None: that of the bundle it was made from)
    backend: str | None  # the backend that runs it (None: not run by this SDK's backends)
    extra: str | None  # the pip extra its builder needs
    modules: tuple[str, ...]  # the modules of that extra the builder imports
    builder: str | None  # "module:function" that writes it; None: not written by `export`
    source: str = BUNDLE_SOURCE
    # True: given a checkpoint, export writes a temporary fp32 bundle first and builds from that.
    via_fp32: bool = False
    # The precisions its backend can run it at (empty: just `precision`).
    run_precisions: tuple[str, ...] = ()
    gpu_precisions: tuple[str, ...] = ()  # those of run_precisions that need --device cuda
    precision_modules: dict = field(default_factory=dict)  # run precision → modules the builder adds
    options: tuple[str, ...] = ()  # `export` options (keyword names of the builder) that apply to it alone
    wrote: str = "bundle"  # what `export` says it wrote
    bench: str = ""  # BENCH_GIVEN, BENCH_DERIVED or "" (not measured)
    bench_options: dict = field(default_factory=dict)  # builder keywords when bench derives it
    reference: int = 0  # bench's accuracy reference: the runnable row with the lowest (> 0) number

    @property
    def exported(self) -> bool:
        return self.builder is not None

    def runs(self) -> tuple[str, ...]:
        """The precisions its backend runs it at."""
        return self.run_precisions or ((self.precision,) if self.precision else ())

    def runs_on(self, precision: str, device: str) -> bool:
        return precision in self.runs() and (precision not in self.gpu_precisions or device.startswith("cuda"))

    def build_modules(self, precision: str | None = None) -> tuple[str, ...]:
        """What building it imports (at `precision`, for formats whose build depends on it)."""
        return self.modules + tuple(self.precision_modules.get(precision, ()))

    def load_builder(self) -> Callable:
        module, _, function = self.builder.partition(":")
        return getattr(importlib.import_module(module), function)


FORMATS: tuple[Format, ...] = (
    Format("onnx", "ONNX", "fp32", "model.json, encoder.onnx, heads.npz, model.safetensors", "CPU, GPU",
           FP32, "onnxruntime", "export", EXPORT_MODULES, "fgresq_sdk.export.from_checkpoint:export_checkpoint",
           source=CHECKPOINT_SOURCE, options=("opset",), bench=BENCH_GIVEN, reference=2),
    Format("checkpoint", "PyTorch checkpoint", "the torch model", "model.safetensors (in an onnx bundle)",
           "CPU, GPU (fp16/bf16)", FP32, "torch", "torch", TORCH_MODULES, None, source=CHECKPOINT_SOURCE,
           run_precisions=(FP32, FP16, BF16), gpu_precisions=(FP16, BF16), bench=BENCH_GIVEN, reference=1),
    Format("onnx-int8", "ONNX int8", "dynamic int8, CPU", "encoder.int8.onnx (heads copied)", "CPU", INT8,
           "onnxruntime", "export", ("onnx",), "fgresq_sdk.export.quantize:quantize_bundle", via_fp32=True,
           options=("calibration", "log"), bench=BENCH_DERIVED, bench_options={"validate": False}),
    Format("onnx-fp16", "ONNX fp16", "GPU", "encoder.fp16.onnx (heads copied)", "GPU (CPU runs it too)", FP16,
           "onnxruntime", "export", ("onnx",), "fgresq_sdk.export.half:half_bundle", via_fp32=True,
           bench=BENCH_DERIVED),
    Format("tensorrt", "TensorRT", "an engine for this GPU, from an fp32 bundle",
           "encoder.<fp16|fp32>.engine, engine.json (fp32 encoder.onnx kept)", "GPU", FP32, "tensorrt", "trt",
           ("tensorrt", "torch"), "fgresq_sdk.export.tensorrt_build:build_engine", run_precisions=(FP32, FP16),
           precision_modules={FP16: ("onnx",)},
           options=("fp16", "batch", "workspace_gb", "timing_cache", "device", "log"), bench=BENCH_GIVEN),
    Format("triton-repo", "Triton model repository", "a Triton model repository from a bundle",
           "a model folder with config.pbtxt per graph, fgresq_triton_repo.json", "Triton server", None,
           None, None, (), "fgresq_sdk.export.triton_repo:export_triton_repo", via_fp32=True,
           options=("max_batch_size",), wrote="Triton model repository"),
)
BY_NAME = {f.name: f for f in FORMATS}
EXPORT_FORMATS = tuple(f for f in FORMATS if f.exported)
DEFAULT_EXPORT = next(f for f in EXPORT_FORMATS if f.source == CHECKPOINT_SOURCE)


def by_backend(backend: str) -> Format:
    """The row whose backend runs the model itself (not a derived copy): the torch checkpoint, the TensorRT
    engine, the fp32 ONNX bundle."""
    return next(f for f in FORMATS if f.backend == backend and f.precision in (FP32, None))


def run_precisions(backend: str) -> tuple[str, ...]:
    """The precisions `backend` can be asked for (`--precision`)."""
    return by_backend(backend).runs()


def bench_format(backend: str, precision: str) -> Format | None:
    """The row `bench` measures for a backend × precision variant (None: no format offers that pair)."""
    return next((f for f in FORMATS if f.bench and f.backend == backend and precision in f.runs()), None)


def ordered(names) -> tuple[str, ...]:
    """The precisions among `names`, in PRECISIONS order, each once."""
    names = set(names)
    return tuple(p for p in PRECISIONS if p in names)


RUN_BACKENDS = tuple(dict.fromkeys(f.backend for f in FORMATS if f.backend))
# What `--precision` may ask a backend for (each backend then checks its own: run_precisions).
RUN_PRECISIONS = ordered(p for b in RUN_BACKENDS for p in run_precisions(b))
# The precisions `bench --precision` knows: those of the bundles it measures (a given or derived bundle).
BENCH_PRECISIONS = ordered(f.precision for f in FORMATS if f.bench)
BENCH_BACKENDS = tuple(dict.fromkeys(f.backend for f in FORMATS if f.bench))
# bench's accuracy reference, best first: the first that runs on the given bundle is used.
REFERENCES = tuple(sorted((f for f in FORMATS if f.reference), key=lambda f: f.reference))


def export_command(backend: str, precision: str = FP32) -> str:
    """The command that writes what `backend` runs at `precision` (error messages point at it)."""
    fmt = next(f for f in EXPORT_FORMATS if f.backend == backend and precision in f.runs())
    return f"fgresq-sdk export --format {fmt.name}"


def derived_by_bench() -> str:
    """`bench --precision`'s note on the precisions it derives ("fp16 and int8 are derived from …")."""
    derived = [f for f in FORMATS if f.bench == BENCH_DERIVED]
    extras = " or ".join(dict.fromkeys(f"the {f.extra} extra" for f in derived))
    return f"{' and '.join(ordered(f.precision for f in derived))} are derived from an fp32 bundle: {extras}"


def owners(option: str) -> str:
    """The export formats an option applies to, for its help text ("tensorrt: …")."""
    return "/".join(f.name for f in EXPORT_FORMATS if option in f.options)


def export_help() -> str:
    return ", ".join(f"{f.name} ({f.help})" for f in EXPORT_FORMATS) + "."
