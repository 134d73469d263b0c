"""`fgresq-sdk serve` (PyTriton's real tritonserver), `RemoteScorer` over HTTP and gRPC, and
`export --format triton-repo` validated against Triton's own model-config protobuf schema.

PyTriton pins numpy<2 while the dev venv has numpy 2, so the server runs from a venv of its own with the
`[serve]` extra installed as a user would (`pip install -e .[serve]`), next to the dev venv
(`$FGRESQ_SERVE_VENV`, default `<dev venv>/serve-env`; built once, ~45 s, reused while pyproject's
dependencies and these extras are unchanged). Clients (tritonclient, RemoteScorer) run here in the dev venv.
When the extra cannot be installed, the server tests skip and say why.

Servers listen on 127.0.0.1 on free ports; every wait is bounded; every server is stopped and the tests
check that nothing is left: processes, ports, /dev/shm segments, workspace folder.
"""
from __future__ import annotations

import concurrent.futures as cf
import fcntl
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Beside the dev venv (inside its folder, so ignored like it); a temporary folder when not run from a venv.
SERVE_ENV = Path(os.environ.get("FGRESQ_SERVE_VENV")
                 or (Path(sys.prefix) / "serve-env" if sys.prefix != sys.base_prefix
                     else Path(tempfile.gettempdir()) / f"fgresq-serve-env-{os.getuid()}"))
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 20


# -- the serve venv ----------------------------------------------------------------------------------------
def _extras_stamp() -> str:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    deps = re.search(r"^dependencies = \[.*?^\]", text, re.S | re.M)
    extras = [ln for ln in text.splitlines() if ln.startswith(("client =", "serve ="))]
    return hashlib.sha256("\n".join([sys.version, str(REPO), deps.group(0) if deps else "", *extras])
                          .encode()).hexdigest()


def serve_env() -> Path:
    """The venv with `fgresq-sdk[serve]` (editable, this checkout): built if missing or stale."""
    stamp = SERVE_ENV / ".fgresq-stamp"
    exe = SERVE_ENV / "bin" / "fgresq-sdk"
    want = _extras_stamp()
    SERVE_ENV.parent.mkdir(parents=True, exist_ok=True)
    with open(SERVE_ENV.parent / ".serve-env.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time
        if exe.exists() and stamp.exists() and stamp.read_text() == want:
            return SERVE_ENV
        steps = [[sys.executable, "-m", "venv", "--clear", str(SERVE_ENV)],
                 [str(SERVE_ENV / "bin" / "python"), "-m", "pip", "install", "-q", "-e", f"{REPO}[serve]"]]
        for cmd in steps:
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                pytest.skip(f"installing the serve extra took over 10 minutes ({' '.join(cmd[:4])} …)")
            if res.returncode != 0:
                last = (res.stderr.strip().splitlines() or ["?"])[-1]
                pytest.skip(f"cannot install the serve extra here ({last})")
        stamp.write_text(want)
    return SERVE_ENV


# -- processes, ports, shared memory -----------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def descendants(pid: int) -> dict[int, bytes]:
    """pid → cmdline of every process below `pid`."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = {}, [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            try:
                out[c] = Path(f"/proc/{c}/cmdline").read_bytes()
            except OSError:
                continue
            todo.append(c)
    return out


def alive(pid: int, cmdline: bytes) -> bool:
    """Still running as the same program (not a zombie, and the pid not reused)."""
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes() != cmdline:
            return False
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def shm_holders(name: str) -> str:
    """Which processes map /dev/shm/`name` now ("pid (parent pid, state) command line", comma-separated): a failed
    cleanup check says who still holds a block, or that none does (its creator died without unlinking it)."""
    holders = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            if f"/dev/shm/{name}".encode() in Path(f"/proc/{d}/maps").read_bytes():
                state, ppid = Path(f"/proc/{d}/stat").read_bytes().rsplit(b")", 1)[1].split()[:2]
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").strip()[:160]
                holders.append(f"{d} (parent {ppid.decode()}, {state.decode()}) {cmd.decode(errors='replace')}")
        except (OSError, ValueError):
            continue
    return ", ".join(holders)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


class Server:
    """`fgresq-sdk serve` from the serve venv, started as a non-interactive shell starts a background job:
    with SIGINT ignored (so the server must handle it itself)."""

    def __init__(self, env: Path, model: Path, workdir: Path, extra: tuple = ()):
        self.http, self.grpc, self.metrics = free_ports(3)
        self.out, self.err = workdir / "serve.out", workdir / "serve.err"
        self.shm_before = shm_entries()
        cmd = [str(env / "bin" / "fgresq-sdk"), "serve", "--model", str(model), "--http-port", str(self.http),
               "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), *extra]
        # `trap "" INT` then exec: SIGINT ignored, as for `cmd &` in a script.
        self.proc = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$@"', "sh", *cmd],
                                     stdout=open(self.out, "wb"), stderr=open(self.err, "wb"),
                                     start_new_session=True)
        self.ready_seen: list[tuple[int, int]] = []  # (/v2/health/ready, /v2/models/fgresq/ready) while starting
        self.tree: dict[int, bytes] = {}
        self.workspace: Path | None = None
        self.start_s = self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    def _wait_ready(self) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}): {self.err.read_text()[-2000:]}")
            self.tree.update(descendants(self.proc.pid))
            ready = http_get(f"{self.url}/v2/health/ready", 2)[0]
            model = http_get(f"{self.url}/v2/models/fgresq/ready", 2)[0]
            self.ready_seen.append((ready, model))
            if ready == 200:
                self.tree.update(descendants(self.proc.pid))
                for cmd in self.tree.values():
                    m = re.match(rb"(/\S*?/fgresq-serve-[^/\x00]+)/", cmd)
                    if m:
                        self.workspace = Path(os.fsdecode(m.group(1)))
                return time.monotonic() - t0
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"server not ready after {START_TIMEOUT_S} s: {self.err.read_text()[-2000:]}")

    def stop(self, sig=signal.SIGTERM) -> float:
        self.tree.update(descendants(self.proc.pid))
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server did not stop within {STOP_TIMEOUT_S} s of signal {sig}")
        return time.monotonic() - t0

    def kill(self) -> None:
        """Last resort (a failed test): the whole session group."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def assert_nothing_left(self) -> None:
        deadline = time.monotonic() + 5  # orphans are reaped by init shortly after
        while time.monotonic() < deadline and any(alive(p, c) for p, c in self.tree.items()):
            time.sleep(0.1)
        left = {p: c.split(b"\0")[0].decode(errors="replace") for p, c in self.tree.items() if alive(p, c)}
        assert not left, f"processes left running: {left}"
        assert self.tree, "no child processes were recorded (tritonserver should be one)"
        for port in (self.http, self.grpc, self.metrics):
            assert not listening(port), f"port {port} still open"
        new = {n for n in shm_entries() - self.shm_before
               if n.startswith(("pytrtion", "psm_", "pytriton"))}
        assert not new, "shared memory left: " + "; ".join(f"{n} mapped by {shm_holders(n) or 'no process'}"
                                                            for n in sorted(new))
        assert self.workspace is not None, "the workspace folder was not seen in the server's processes"
        assert not self.workspace.exists(), f"workspace left: {self.workspace}"


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env() -> Path:
    return serve_env()


@pytest.fixture(scope="module")
def server(env, fused_tiny_bundle, tmp_path_factory):
    """One server for the module (max batch 8, 20 ms queue delay so concurrent requests merge); stopped with
    SIGINT by the last test, which checks the cleanup. Its bundle has a naturalness term, so every "remote
    equals local" below also checks that the server returns the fused score."""
    srv = Server(env, fused_tiny_bundle, tmp_path_factory.mktemp("serve"),
                 ("--max-batch-size", "8", "--max-queue-delay-us", "20000"))
    yield srv
    if srv.proc.poll() is None:  # the SIGINT test did not run (-k): stop it politely, then for sure
        try:
            srv.stop(signal.SIGTERM)
        finally:
            srv.kill()


@pytest.fixture(scope="module")
def local(fused_tiny_bundle):
    from fgresq_sdk.scorer import Scorer

    scorer = Scorer(fused_tiny_bundle)
    assert scorer.naturalness is not None
    return scorer


@pytest.fixture(scope="module")
def junk(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("junk")
    (d / "text.jpg").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buf, format="PNG")
    (d / "truncated.png").write_bytes(buf.getvalue()[:60])
    return {"text": d / "text.jpg", "empty": d / "empty.png", "truncated": d / "truncated.png"}


# -- serving ----------------------------------------------------------------------------------------------
def test_ready_only_once_the_model_is_loaded(server):
    assert server.ready_seen[-1] == (200, 200)
    assert all(model == 200 for ready, model in server.ready_seen if ready == 200), server.ready_seen
    assert server.out.read_bytes() == b"", "serve wrote to stdout"
    assert "Traceback" not in server.err.read_text()
    assert http_get(f"{server.url}/v2/health/live")[0] == 200
    status, body = http_get(f"{server.url}/v2/models/fgresq/config")
    cfg = json.loads(body)
    assert status == 200 and cfg["max_batch_size"] == 8
    assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 20000
    assert [i["name"] for i in cfg["input"]] == ["image"] and cfg["input"][0]["data_type"] == "TYPE_STRING"
    assert {o["name"]: o["data_type"] for o in cfg["output"]} == {
        "score": "TYPE_FP32", "features": "TYPE_FP32", "error": "TYPE_STRING"}


def test_info_names_the_bundle_and_no_server_path(server, fused_tiny_bundle):
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.client import RemoteScorer

    tiny_bundle = fused_tiny_bundle
    with RemoteScorer(server.url) as r:
        info = r.info
    bundle = load_bundle(tiny_bundle)
    assert info["bundle"]["name"] == bundle.name
    assert {k: v["sha256"] for k, v in info["bundle"]["files"].items()} == \
        {k: v["sha256"] for k, v in bundle.manifest["files"].items()}
    assert str(tiny_bundle) not in json.dumps(info) and "/tmp" not in json.dumps(info)


def test_concurrent_http_and_grpc_clients_equal_local(server, local, photo_paths, junk):
    from fgresq_sdk.client import RemoteScorer

    items = list(photo_paths[:3]) + [junk["text"]] + list(photo_paths[3:]) + [junk["truncated"]]
    want = local.score(photo_paths)

    def client(k: int):
        url = server.url if k % 2 == 0 else f"grpc://127.0.0.1:{server.grpc}"
        with RemoteScorer(url, batch_size=1, concurrency=3) as r:
            return [list(r.iter_encode(items)) for _ in range(2)]

    with cf.ThreadPoolExecutor(4) as pool:
        runs = [enc for res in pool.map(client, range(4)) for enc in res]
    for encs in runs:
        good = [e for e in encs if e.error is None]
        bad = [e for e in encs if e.error is not None]
        assert [e.name for e in bad] == [str(junk["text"]), str(junk["truncated"])]
        np.testing.assert_allclose([e.score for e in good], want, rtol=0, atol=1e-6)
        for e, f in zip(good, local.encode(photo_paths)[0]):
            np.testing.assert_allclose(e.features, f, rtol=0, atol=1e-5)
    # Dynamic batching merged requests: fewer executions than inferences.
    metrics = http_get(f"http://127.0.0.1:{server.metrics}/metrics")[1].decode()

    def metric(name):
        m = re.search(rf'^{name}{{model="fgresq",version="1"}} (\d+)', metrics, re.M)
        return int(m.group(1))

    assert metric("nv_inference_count") >= 4 * 2 * len(items)
    assert metric("nv_inference_exec_count") < metric("nv_inference_count")


def test_a_bad_image_never_fails_the_others_in_its_batch(server, local, photo_paths, junk):
    import tritonclient.http as h

    blobs = [photo_paths[0].read_bytes(), junk["text"].read_bytes(), photo_paths[1].read_bytes(), b"",
             junk["truncated"].read_bytes(), photo_paths[2].read_bytes()]
    arr = np.empty((len(blobs), 1), dtype=object)
    arr[:, 0] = blobs
    inp = h.InferInput("image", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    c = h.InferenceServerClient(f"127.0.0.1:{server.http}")
    try:
        res = c.infer("fgresq", [inp], outputs=[h.InferRequestedOutput(o) for o in ("score", "error")])
    finally:
        c.close()
    errors = [e.decode() for e in res.as_numpy("error").reshape(-1)]
    scores = res.as_numpy("score").reshape(-1)
    assert [bool(e) for e in errors] == [False, True, False, True, True, False]
    np.testing.assert_allclose(scores[[0, 2, 5]], local.score(photo_paths[:3]), rtol=0, atol=1e-6)
    assert np.isnan(scores[[1, 3, 4]]).all()
    for e in filter(None, errors):  # one line, no traceback, path or memory address of the server
        assert "\n" not in e and "Traceback" not in e and "/" not in e and "0x" not in e and len(e) <= 200
    assert errors[1] == "not a recognised image format" and errors[3] == "empty file"


def test_remote_rank_and_compare_equal_local(server, local, photo_paths):
    from fgresq_sdk.client import RemoteScorer

    want = local.rank(photo_paths)
    for url in (server.url, f"grpc://127.0.0.1:{server.grpc}"):
        with RemoteScorer(url, batch_size=4) as r:
            n0 = r.encoded_images
            got = r.rank(photo_paths)
            assert r.encoded_images - n0 == len(photo_paths)  # N encodes, no per-pair call
            assert got.names == want.names
            assert list(got.ranking.order) == list(want.ranking.order)
            assert list(got.ranking.tier) == list(want.ranking.tier)
            np.testing.assert_allclose(got.ranking.strength, want.ranking.strength, rtol=0, atol=1e-6)
            np.testing.assert_allclose(got.ranking.win_rate, want.ranking.win_rate, rtol=0, atol=1e-6)
            assert [e["path"] for e in got.entries()] == [e["path"] for e in want.entries()]
            a, b = photo_paths[0], photo_paths[3]
            for raw in (False, True):
                lc, rc = local.compare(a, b, raw=raw), r.compare(a, b, raw=raw)
                assert rc.raw == raw and rc.verdict == lc.verdict
                np.testing.assert_allclose([rc.p_first_better, rc.p_second_better, rc.p_similar],
                                           [lc.p_first_better, lc.p_second_better, lc.p_similar], atol=1e-6)
            ab, ba = r.compare(a, b), r.compare(b, a)  # symmetrised: swapping swaps the answer
            assert ab.p_first_better == pytest.approx(ba.p_second_better, abs=1e-12)
            # PIL images and arrays are decoded here with the SDK's rules and sent losslessly.
            img = Image.open(photo_paths[1])
            np.testing.assert_allclose(r.score([img, np.asarray(img.convert("RGB"))]),
                                       local.score([img, np.asarray(img.convert("RGB"))]), atol=1e-6)
            assert r.rank([]).names == [] and r.describe()["model"]["name"] == local.bundle.name


def test_readme_curl_example(server, local, photo_paths):
    """The README's curl command, run as printed (the binary tensor extension: JSON header + raw bytes)."""
    if subprocess.run(["sh", "-c", "command -v curl"], capture_output=True).returncode != 0:
        pytest.skip("curl is not installed")
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(IMG=.*?)```", text, re.S)
    assert block, "README has no curl example starting with IMG="
    script = block.group(1).replace("photo.jpg", str(photo_paths[0])).replace("8000", str(server.http))
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    out = {o["name"]: o["data"] for o in json.loads(res.stdout)["outputs"]}
    assert out["error"] == [""]
    assert out["score"][0] == pytest.approx(float(local.score([photo_paths[0]])[0]), abs=1e-6)


def test_ports_in_use_is_one_line_and_exit_2(env, tiny_bundle, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        a, b = free_ports(2)
        t0 = time.monotonic()
        res = subprocess.run([str(env / "bin" / "fgresq-sdk"), "serve", "--model", str(tiny_bundle),
                              "--http-port", str(a), "--grpc-port", str(port), "--metrics-port", str(b)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"error: grpc port {port} on 127.0.0.1 is already in use (choose another with --grpc-port)"]
    assert time.monotonic() - t0 < 30  # refused before Triton starts


def test_sigterm_stops_cleanly(env, tiny_bundle, tmp_path):
    srv = Server(env, tiny_bundle, tmp_path)
    try:
        took = srv.stop(signal.SIGTERM)
    finally:
        srv.kill()
    assert srv.proc.returncode == 0, srv.err.read_text()[-2000:]
    assert took < 15
    srv.assert_nothing_left()
    assert "Traceback" not in srv.err.read_text() and srv.out.read_bytes() == b""


def test_sigint_stops_cleanly_even_when_started_ignoring_it(server):
    """Last of the module's server tests: it stops the shared server."""
    took = server.stop(signal.SIGINT)
    assert server.proc.returncode == 0, server.err.read_text()[-2000:]
    assert took < 15
    server.assert_nothing_left()
    err = server.err.read_text()
    assert "Traceback" not in err and "leaked" not in err, err[-2000:]


# A process running a program from the server's folder (as tritonserver and its stubs do) maps one block and starts
# a helper that maps another (as a stub's tensor-store manager); neither unlinks them when killed.
SWEEP_SCRIPT = r"""
import contextlib, json, os, subprocess, sys
from multiprocessing import shared_memory
from pathlib import Path
from fgresq_sdk.serve import server

MAP = ("import mmap, os, sys\n"
       "for n in sys.argv[1:]:\n"
       "    fd = os.open('/dev/shm/' + n, os.O_CREAT | os.O_RDWR, 0o600); os.ftruncate(fd, 4096)\n"
       "    globals()[n] = mmap.mmap(fd, 4096)\n")
HELPER = MAP + "print(flush=True); sys.stdin.read()"  # exits when its parent dies (stdin closed)
CHILD = MAP.replace("argv[1:]", "argv[2:]") + (
    "import subprocess; h = subprocess.Popen([sys.argv[1], '-c', HELPER, B], stdin=-1, stdout=-1)\n"
    "h.stdout.readline(); print(flush=True); sys.stdin.read()")
root = Path(sys.argv[1])
pid = os.getpid()
a, b, other = f"psm_fgresqtest{pid}", f"pytrtion{pid}-fgresqtest", f"fgresqtest{pid}"
(root / "bin").mkdir(parents=True)
(root / "bin" / "tritonserver").symlink_to(sys.executable)
mine = shared_memory.SharedMemory(create=True, size=4096)  # this process's own block: not the server's
child = None
try:
    child = subprocess.Popen([str(root / "bin" / "tritonserver"), "-c", f"HELPER = {HELPER!r}; B = {b!r}\n" + CHILD,
                              sys.executable, a, other], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    child.stdout.readline()
    att = shared_memory.SharedMemory(name=a)  # attached as PyTriton's client does: registered with our tracker
    att.close()
    found = server._server_shm(root, None)
    server._sweep(root, None, found)
    left = [n for n in (a, b, other, mine.name) if os.path.exists("/dev/shm/" + n)]
    print(json.dumps({"tree": sorted([a, b]), "found": sorted(found), "left": left, "others": [other, mine.name],
                      "child": child.wait(10)}))
finally:
    if child is not None and child.poll() is None:
        child.kill()
    for n in (a, b, other):
        with contextlib.suppress(OSError):
            os.unlink("/dev/shm/" + n)
    mine.close()
    mine.unlink()
"""


def test_sweep_unlinks_the_shared_memory_of_the_servers_processes_only(tmp_path):
    """Names the server's processes (and their helpers) map are collected from /proc/<pid>/maps and unlinked
    after they are killed; a block of another process, or with another prefix, stays; no resource-tracker
    warning at exit for a block this process had attached."""
    res = subprocess.run([sys.executable, "-c", SWEEP_SCRIPT, str(tmp_path / "fgresq-serve-x")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["found"] == out["tree"]
    assert out["left"] == out["others"]
    assert out["child"] == -signal.SIGKILL


# -- the Triton model repository ----------------------------------------------------------------------------
def _parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def test_triton_repo_validates_against_tritons_schema(fused_tiny_bundle, tmp_path, local, photo_paths):
    tiny_bundle = fused_tiny_bundle  # with a naturalness term: the repository must tell clients how to add it
    import onnxruntime as ort
    from tritonclient.grpc import model_config_pb2 as pb

    from cli_runner import run_cli
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.preprocess import preprocess

    repo = tmp_path / "repo"
    run = run_cli("export", "--format", "triton-repo", "--checkpoint", tiny_bundle, "--out", repo,
                  "--max-batch-size", "16", cwd=tmp_path)
    assert run.rc == 0, run.err
    bundle = load_bundle(tiny_bundle)
    # No compare model: clients compare from `features` with heads.npz, the one head.
    assert sorted(p.name for p in repo.iterdir()) == ["fgresq_encoder", "fgresq_triton_repo.json"]
    enc = _parse_config(repo / "fgresq_encoder" / "config.pbtxt")
    assert enc.name == "fgresq_encoder" and enc.platform == "onnxruntime_onnx" and enc.max_batch_size == 16
    assert enc.dynamic_batching.max_queue_delay_microseconds == 2000
    size = bundle.preprocess_spec.size
    (inp,) = enc.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("image", pb.TYPE_FP32, [3, size, size])
    outs = {o.name: o for o in enc.output}
    assert list(outs["features"].dims) == [3 * bundle.manifest["feature_dim"]]
    assert list(outs["score"].dims) == [1] and list(outs["score"].reshape.shape) == []
    params = {k: v.string_value for k, v in enc.parameters.items()}
    assert json.loads(params["fgresq.preprocess"]) == bundle.preprocess
    assert params["fgresq.heads_sha256"] == bundle.manifest["files"]["heads"]["sha256"]
    # The graph Triton would load has exactly these names, types and dims, and gives the SDK's scores.
    model = repo / "fgresq_encoder" / "1" / "model.onnx"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == bundle.manifest["files"]["encoder"]["sha256"]
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert {o.name for o in sess.get_outputs()} == set(outs)
    x = np.stack([preprocess(p, bundle.preprocess_spec) for p in photo_paths[:2]])
    feats, score = sess.run(["features", "score"], {"image": x})
    # The graph's score is the encoder's; the repository's record says how a client adds the bundle's term, and
    # doing so gives the SDK's scores (the pristine model travels inside the model folder).
    from fgresq_sdk.naturalness import NaturalnessTerm

    record = json.loads((repo / "fgresq_triton_repo.json").read_text())
    assert (repo / record["naturalness"]["pristine"]).is_file()
    term = NaturalnessTerm.from_bundle(bundle)
    fused = term.fuse(np.asarray(score).reshape(-1), [term.log_distance(v[None]) for v in x])
    np.testing.assert_allclose(fused, local.score(photo_paths[:2]), atol=1e-6)
    assert np.abs(np.asarray(score).reshape(-1) - fused).max() > 1e-3
    from fgresq_sdk.heads import CompareHeadNP

    head = CompareHeadNP.from_npz((repo / "fgresq_encoder" / "heads.npz").read_bytes())
    assert head.weight.shape == local.head.weight.shape and np.array_equal(head.weight, local.head.weight)
    # Replacing: only a repository this SDK wrote, and only with --force.
    again = run_cli("export", "--format", "triton-repo", "--checkpoint", tiny_bundle, "--out", repo, cwd=tmp_path)
    assert again.rc == 2 and "--force" in again.err
    forced = run_cli("export", "--format", "triton-repo", "--checkpoint", tiny_bundle, "--out", repo,
                     "--force", cwd=tmp_path)
    assert forced.rc == 0, forced.err
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = run_cli("export", "--format", "triton-repo", "--checkpoint", tiny_bundle, "--out", other,
                      "--force", cwd=tmp_path)
    assert refused.rc == 2 and (other / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_tensorrt_plan_config_validates(tiny_bundle):
    """The plan variant's config, from the encoder's tensors and an engine profile's largest batch (no
    TensorRT here to build a real engine: see README)."""
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.export.triton_repo import TRT_MODEL, _io, model_config

    bundle = load_bundle(tiny_bundle)
    ins, outs = _io(bundle.read("encoder"))
    fp32 = lambda io: [(n, "TYPE_FP32", s) for n, _, s in io]  # noqa: E731
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"trt-{os.getpid()}.pbtxt"
    path.write_text(model_config(TRT_MODEL, "tensorrt_plan", 8, fp32(ins), fp32(outs), queue_delay_us=100))
    try:
        cfg = _parse_config(path)
    finally:
        path.unlink()
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 8
    assert [i.name for i in cfg.input] == ["image"]


# -- without the extra ------------------------------------------------------------------------------------
def test_serve_without_the_extra_names_it(tmp_path):
    from test_runtime_only import runtime_only_code

    code = runtime_only_code(["serve"], ("pytriton", "tritonclient"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: serve needs the serve extra: pip install 'fgresq-sdk[serve]' (missing: pytriton)"]
    assert "torch" not in res.stderr
