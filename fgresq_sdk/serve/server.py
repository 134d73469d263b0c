"""`fgresq-sdk serve`: a Triton Inference Server (PyTriton's bundled `tritonserver`, Python backend) in front
of one `Scorer`.

Requests reach this process through PyTriton's proxy; dynamic batching merges concurrent requests, and each
merged batch is decoded and encoded by `Scorer.iter_encode`, where a bad image is that item's error and
never fails the items it was batched with. See `fgresq_sdk.serve` for the models and tensors.

Lifecycle. Ports are checked before anything starts (one line, exit 2 when one is taken). The models are
written to a local model store before `tritonserver` starts, so it opens its HTTP/gRPC ports only once they
are loaded: `/v2/health/ready` never answers 200 for a server without its model. SIGTERM and SIGINT (also
when started from a non-interactive shell, which ignores SIGINT by default) stop the server, the Python
backend stubs and PyTriton's proxy, and the workspace folder is removed, as is any PyTriton shared memory
(/dev/shm) that the server's processes mapped and left behind (`_sweep`). PyTriton's Python-backend stub
loads `libpython3.X.so` by name: the running interpreter's LIBDIR is put first on LD_LIBRARY_PATH so that a
pyenv/venv interpreter does not get the system's library of another patch release.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import (INFO_INPUT, INFO_MODEL, INFO_OUTPUT, INPUT, INTERNAL_ERROR, MODEL, encode_info, info_payload,
               public_reason)
from ..errors import FGResQError

LOG = logging.getLogger("fgresq_sdk.serve")


class ServeError(FGResQError):
    """The server cannot start here (a port in use, Triton failed to start)."""


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    instances: int = 1
    exit_timeout_s: int = 5


def check_ports(host: str, ports: dict[str, int]) -> None:
    """ServeError naming the first port that is taken (or repeated); SO_REUSEADDR as servers bind, so a port
    in TIME_WAIT counts as free and only a listener counts as taken."""
    seen: dict[int, str] = {}
    for what, port in ports.items():
        if not 0 < int(port) < 65536:
            raise ServeError(f"--{what}-port {port}: not a port number (1-65535)")
        if port in seen:
            raise ServeError(f"--{what}-port {port} is the same as --{seen[port]}-port")
        seen[port] = what
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServeError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    for what, port in ports.items():
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr[0], port) if family == socket.AF_INET else (addr[0], port, 0, 0))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ServeError(f"{what} port {port} on {host} is already in use "
                                     f"(choose another with --{what}-port)") from None
                raise ServeError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def libpython_first_on_path() -> None:
    """Put the running interpreter's libpython folder first on LD_LIBRARY_PATH (inherited by tritonserver and
    the Python-backend stubs it starts), so the stub loads this interpreter's libpython."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not os.path.isdir(libdir):
        return
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *parts])


class _Handler:
    """The `fgresq` model's inference callable: a list of requests (merged by dynamic batching) in, one
    response per request out. Never raises: PyTriton would pass an exception's text to the client."""

    def __init__(self, scorer, feature_dim: int):
        self.scorer = scorer
        self.feature_dim = feature_dim

    def __call__(self, requests):
        sizes, items = [], []
        for req in requests:
            arr = np.asarray(req[INPUT], dtype=object)
            arr = arr.reshape(arr.shape[0], -1) if arr.ndim else arr.reshape(1, 1)
            sizes.append(arr.shape[0])
            for row in arr:
                v = row[0] if row.size else b""
                items.append(v if isinstance(v, bytes) else str(v).encode("utf-8"))
        n = len(items)
        scores = np.full((n, 1), np.nan, np.float32)
        feats = np.full((n, self.feature_dim), np.nan, np.float32)
        errors = np.full((n, 1), INTERNAL_ERROR.encode(), dtype=object)
        try:
            for enc in self.scorer.iter_encode(items, names=[f"item {i}" for i in range(n)]):
                if enc.error is None:
                    scores[enc.index, 0] = enc.score
                    feats[enc.index] = enc.features
                    errors[enc.index, 0] = b""
                else:
                    errors[enc.index, 0] = public_reason(enc.error).encode("utf-8")
        except Exception as exc:  # the encoder itself failed: every item not done yet gets INTERNAL_ERROR
            LOG.error("scoring a batch of %d failed: %s: %s", n, type(exc).__name__, exc)
        out, start = [], 0
        for k in sizes:
            out.append({"score": scores[start:start + k], "features": feats[start:start + k],
                        "error": errors[start:start + k]})
            start += k
        return out


class _InfoHandler:
    def __init__(self, payload: bytes):
        self.payload = payload

    def __call__(self, requests):
        return [{INFO_OUTPUT: np.array([self.payload], dtype=object)} for _ in requests]


def serve(scorer, opts: ServeOptions, *, log: Callable[[str], None] = lambda m: None,
          on_ready: Callable[[], None] | None = None, stop: threading.Event | None = None) -> None:
    """Run Triton with `scorer` until SIGTERM/SIGINT (main thread) or `stop` is set; clean up everything.

    Raises ServeError when a port is taken or Triton cannot start; ImportError without PyTriton.
    """
    check_ports(opts.host, {"http": opts.http_port, "grpc": opts.grpc_port, "metrics": opts.metrics_port})
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy

    stop = stop or threading.Event()
    if not logging.getLogger("pytriton").handlers and not logging.getLogger().handlers:
        logging.getLogger("pytriton").setLevel(logging.ERROR)  # our own lines say what happens
    signals = _install_signal_handlers(stop)
    saved_env = {k: os.environ.get(k) for k in ("LD_LIBRARY_PATH", "PYTHONWARNINGS")}
    libpython_first_on_path()
    # PyTriton's tensor store leaves its shared-memory blocks to multiprocessing's resource tracker, which
    # unlinks them at exit and warns about each; nothing is left behind, so the warning is only noise.
    os.environ["PYTHONWARNINGS"] = ",".join(
        [w for w in os.environ.get("PYTHONWARNINGS", "").split(",") if w]
        + ["ignore::UserWarning:multiprocessing.resource_tracker"])
    bundle = scorer.bundle
    device = scorer.backend.describe().get("device", "cpu")
    feature_dim = 3 * int(bundle.manifest.get("feature_dim") or scorer.head.dim // 3)
    info = encode_info(info_payload(bundle, bundle.read("heads"), max_batch_size=opts.max_batch_size,
                                    backend=scorer.backend.describe().get("backend", "unknown")))
    scorer.batch_size = max(scorer.batch_size, opts.max_batch_size)
    root = Path(tempfile.mkdtemp(prefix="fgresq-serve-"))
    triton = None
    started = False
    shm: set[str] = set()  # shared memory mapped by the server's processes (_sweep unlinks what is left)
    try:
        config = TritonConfig(http_address=opts.host, grpc_address=opts.host, metrics_address=opts.host,
                              http_port=opts.http_port, grpc_port=opts.grpc_port, metrics_port=opts.metrics_port,
                              exit_timeout_secs=opts.exit_timeout_s, strict_readiness=True, log_verbose=0,
                              allow_gpu_metrics=not str(device).startswith("cpu"),
                              log_file=root / "tritonserver.log")
        # Models go to a local store before tritonserver starts: it listens only once they are loaded.
        policy = TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)
        triton = _quiet_triton_class(Triton)(config=config, workspace=root / "workspace",
                                             triton_lifecycle_policy=policy)
        handlers = [_Handler(scorer, feature_dim) for _ in range(max(1, opts.instances))]
        triton.bind(
            model_name=MODEL, infer_func=handlers if len(handlers) > 1 else handlers[0],
            inputs=[Tensor(name=INPUT, dtype=bytes, shape=(1,))],
            outputs=[Tensor(name="score", dtype=np.float32, shape=(1,)),
                     Tensor(name="features", dtype=np.float32, shape=(feature_dim,)),
                     Tensor(name="error", dtype=bytes, shape=(1,))],
            config=ModelConfig(max_batch_size=opts.max_batch_size,
                               batcher=DynamicBatcher(max_queue_delay_microseconds=opts.max_queue_delay_us)),
            strict=True)
        triton.bind(model_name=INFO_MODEL, infer_func=_InfoHandler(info),
                    inputs=[Tensor(name=INFO_INPUT, dtype=bytes, shape=(1,))],
                    outputs=[Tensor(name=INFO_OUTPUT, dtype=bytes, shape=(1,))],
                    config=ModelConfig(batching=False))
        if not stop.is_set():
            try:
                triton.run()
                started = True
            except Exception as exc:  # tritonserver exited at start (e.g. a port taken since the check)
                why = _triton_error(root / "tritonserver.log") or f"{type(exc).__name__}: {_first_line(exc)}"
                raise ServeError(f"Triton failed to start ({why}); is another server using these ports?") from None
        if not stop.is_set():
            hp = f"{opts.host}:{{}}"
            log(f"serving model '{MODEL}' ({bundle.name}) — HTTP {hp.format(opts.http_port)}, "
                f"gRPC {hp.format(opts.grpc_port)}, metrics http://{hp.format(opts.metrics_port)}/metrics "
                f"(SIGTERM or Ctrl-C stops it)")
            if on_ready is not None:
                on_ready()
        while not stop.is_set():
            if not triton.is_alive():
                raise ServeError("Triton stopped unexpectedly")
            shm |= _server_shm(root, _shm_prefix(triton))
            stop.wait(0.5)
        log("stopping")
    finally:
        t0 = time.monotonic()
        try:
            if triton is not None:
                shm |= _server_shm(root, _shm_prefix(triton))
                _stop_triton(triton, started)
        finally:
            _sweep(root, _shm_prefix(triton), shm)
            shutil.rmtree(root, ignore_errors=True)
            _restore_signal_handlers(signals)
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        LOG.debug("stopped in %.1f s", time.monotonic() - t0)


def _stop_triton(triton, started: bool) -> None:
    """Stop tritonserver, PyTriton's proxies (their sockets, shared memory and helper processes) and the
    workspace. After a failed start the full `Triton.stop()` is not used: it asks the server at our URL to
    unload our models, and that URL may be another server's (the one that took the port)."""
    import atexit

    try:
        if started:
            triton.stop()
            return
        atexit.unregister(triton.stop)
        server = getattr(triton, "_triton_server", None)
        if server is not None:
            server.stop()
        for model in list(triton._model_manager.models):
            model.clean()
        triton._workspace.clean()
    except Exception as exc:  # never mask the reason the server stopped
        LOG.warning("while stopping Triton: %s: %s", type(exc).__name__, _first_line(exc))


def _shm_prefix(triton) -> str | None:
    try:
        return str(triton._python_backend_config["shm-region-prefix-name"]) or None
    except Exception:
        return None


def _shm_prefixes(shm_prefix: str | None) -> tuple[str, ...]:
    """PyTriton's shared memory: its tensor store's `psm_*` blocks and the Python backend's regions."""
    return ("psm_", "pytrtion", "pytriton") + ((shm_prefix,) if shm_prefix else ())


def _server_processes(root: Path) -> tuple[list[int], set[int]]:
    """The processes running a program from our temporary folder `root` (tritonserver, its Python-backend stubs,
    also once orphaned), and those with all their descendants (the stubs' tensor-store managers and
    multiprocessing resource trackers): this server's processes, never another program's."""
    marker = os.fsencode(str(root)) + b"/"
    children: dict[int, list[int]] = {}
    own = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [], set()
    for d in entries:
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0]
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
        if argv0.startswith(marker):
            own.append(int(d))
    tree, todo = set(own), list(own)
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in tree:
                tree.add(c)
                todo.append(c)
    return own, tree


def _shm_mapped(pids, prefixes: tuple[str, ...]) -> set[str]:
    """The /dev/shm names (starting with one of `prefixes`) that the processes `pids` map now, per
    /proc/<pid>/maps; a name already unlinked (`(deleted)`) is not one."""
    names = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                for line in f:
                    path = line.split(None, 5)[5:]
                    if path and path[0].startswith(b"/dev/shm/") and not path[0].endswith(b"(deleted)\n"):
                        name = os.fsdecode(path[0][9:].rstrip(b"\n"))
                        if name.startswith(prefixes) and "/" not in name:
                            names.add(name)
        except OSError:
            continue
    return names


def _server_shm(root: Path, shm_prefix: str | None, tree: "set[int] | None" = None) -> set[str]:
    """PyTriton's shared memory that this server's processes (`tree`, found from `root` when not given) map now."""
    if tree is None:
        tree = _server_processes(root)[1]
    return _shm_mapped(tree, _shm_prefixes(shm_prefix))


def _sweep(root: Path, shm_prefix: str | None, shm: Iterable[str] = (), wait_s: float = 3.0) -> None:
    """Last resort after stopping. Processes still running a program from our workspace (tritonserver, or its
    Python-backend stubs orphaned by a tritonserver that exited without unloading its models) are killed, and
    they and their helpers (a stub's tensor-store manager dies with it, its resource tracker then unlinks the
    manager's blocks) get `wait_s` to exit. Then what is left in /dev/shm is unlinked if it has our prefix or is
    in `shm`: names our processes mapped, read from their /proc/<pid>/maps while they ran and here before they
    are killed, so this server's and never another program's. Why: PyTriton's `psm_*` blocks and the backend's
    regions were once left behind by a stop on a loaded machine, and a block whose creator and tracker are gone
    stays until reboot."""
    own, tree = _server_processes(root)
    shm = set(shm) | _server_shm(root, shm_prefix, tree)
    for pid in own:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while tree and time.monotonic() < deadline:
        tree = {p for p in tree if os.path.exists(f"/proc/{p}") and not _is_zombie(p)}
        time.sleep(0.05)
    if os.path.isdir("/dev/shm"):
        shm |= {n for n in os.listdir("/dev/shm") if shm_prefix and n.startswith(shm_prefix)}
        for name in sorted(shm):
            _unlink_shm(name)


def _unlink_shm(name: str) -> None:
    """Unlink /dev/shm/`name`. A `psm_*` block this process attached (PyTriton's client) is registered with our
    multiprocessing resource tracker, which would warn at exit that it "leaked" and then fail to unlink it: it
    is dropped from the tracker, as `SharedMemory.unlink` does (registered first: unregistering an unknown name
    makes the tracker print a traceback)."""
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except OSError:
        return
    if name.startswith("psm_"):
        from multiprocessing import resource_tracker

        if getattr(resource_tracker._resource_tracker, "_fd", None) is not None:  # only a tracker that runs
            with contextlib.suppress(Exception):
                resource_tracker.register("/" + name, "shared_memory")
                resource_tracker.unregister("/" + name, "shared_memory")


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


def _quiet_triton_class(triton_cls):
    """PyTriton echoes tritonserver's console output to our stdout; its log goes to a file in the workspace
    instead, and stdout stays free for machine-readable output."""

    class QuietTriton(triton_cls):
        def _initialize_server(self):
            super()._initialize_server()
            if hasattr(self._triton_server, "_verbose"):
                self._triton_server._verbose = False

    return QuietTriton


def _triton_error(log_file: Path) -> str | None:
    """The last error line of tritonserver's log (`E1129 12:00:00.000 123 file.cc:45] "message"`)."""
    try:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    errors = [ln.split("] ", 1)[1].strip().strip('"') for ln in lines if ln.startswith("E") and "] " in ln]
    # CPU-only machines log CUDA/NVML complaints as errors at every start: not the reason it stopped.
    errors = [e for e in errors if not any(k in e for k in ("Cuda", "CUDA", "NVML", "DCGM", "pinned"))]
    return errors[-1][:300] if errors else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _install_signal_handlers(stop: threading.Event) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if stop.is_set():  # a second signal while stopping: stop waiting politely
            raise KeyboardInterrupt
        stop.set()

    return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


def main_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
