"""`fgresq-sdk batch`: local and Ray Data engines, Parquet in and out, error rows, --resume after a partial
run, a crash (SIGKILL) and SIGTERM, and `add_scores` on a user's own `ray.data.Dataset`.

Ray runs for real: a local Ray of 2 CPUs with a 100 MiB object store, in a temporary folder that must be
gone afterwards together with every Ray process.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLI = Path(sys.executable).parent / "fgresq-sdk"
pa = pytest.importorskip("pyarrow", reason="the batch extra (pyarrow) is not installed")
pq = pytest.importorskip("pyarrow.parquet")
BAD = {"broken.jpg": "not a recognised image format", "empty.png": "empty file (0 bytes)"}


def run(*args, cwd, timeout=300, env=None) -> subprocess.CompletedProcess:
    res = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                         env={**os.environ, **(env or {})})
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    return res


def rows(out: Path) -> dict:
    table = pq.read_table(out)
    assert table.schema.field("score").type == pa.float32()
    d = table.to_pydict()
    paths = d["path"]
    assert len(paths) == len(set(paths)), "a path was written twice"
    return {p: {k: d[k][i] for k in d if k != "path"} for i, p in enumerate(paths)}


@pytest.fixture(scope="module")
def images(photo_paths, tmp_path_factory) -> Path:
    """33 images in three folders (sizes and formats vary) and two that are not images."""
    root = tmp_path_factory.mktemp("batch-images")
    jobs = [(sub, scale, p, crop) for sub, scale in (("a", 1.0), ("b", 0.5), ("c/deep", 0.3))
            for p in photo_paths for crop in (1.0, 0.7)][:33]
    for k, (sub, scale, p, crop) in enumerate(jobs):
        (root / sub).mkdir(parents=True, exist_ok=True)
        img = Image.open(p).convert("RGB")
        w, h = img.size
        c = img.crop((0, 0, max(8, int(w * crop)), max(8, int(h * crop))))
        c = c.resize((max(8, int(c.width * scale)), max(8, int(c.height * scale))))
        c.save(root / sub / f"{p.stem}-{crop}.{'png' if k % 2 else 'jpg'}")
    (root / "a" / "broken.jpg").write_text("not an image")
    (root / "c" / "empty.png").write_bytes(b"")
    return root


def all_inputs(images: Path) -> list[str]:
    return sorted(str(p) for p in images.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def expected(images, tiny_bundle) -> dict:
    """A local Scorer on every input, by path: (score, features) or the error."""
    from fgresq_sdk.scorer import Scorer

    s = Scorer(tiny_bundle)
    paths = all_inputs(images)
    return {e.name: (e.score, e.features, e.error) for e in s.iter_encode(paths, names=paths)}


def check_against(got: dict, expected: dict, features: bool) -> None:
    assert set(got) == set(expected)
    for path, (score, feats, error) in expected.items():
        row = got[path]
        if error is None:
            assert row["error"] is None and row["score"] == pytest.approx(score, abs=1e-6), path
            if features:
                np.testing.assert_allclose(row["features"], feats, atol=1e-5)
        else:
            assert row["error"] == error and row["score"] is None, path
            if features:
                assert row["features"] is None


def test_local_engine_one_row_per_input(images, tiny_bundle, expected, tmp_path):
    out = tmp_path / "scores.parquet"
    res = run("batch", images, "--out", out, "--model", tiny_bundle, "--with-features", cwd=tmp_path)
    assert res.returncode == 1, res.stderr  # some inputs are errors
    assert res.stdout == ""
    got = rows(out)
    check_against(got, expected, features=True)
    assert {Path(p).name for p, r in got.items() if r["error"]} == set(BAD)
    assert res.stderr.strip().splitlines()[-1].startswith(f"wrote {len(expected)} rows (2 errors) to ")
    # A text file of paths and a Parquet `path` column give the same rows.
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join(expected) + "\n\n")
    out2 = tmp_path / "from-list"
    assert run("batch", listing, "--out", out2, "--model", tiny_bundle, cwd=tmp_path).returncode == 1
    check_against(rows(out2), expected, features=False)
    src = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"path": list(expected), "other": list(range(len(expected)))}), src)
    out3 = tmp_path / "from-parquet"
    assert run("batch", src, "--out", out3, "--model", tiny_bundle, cwd=tmp_path).returncode == 1
    check_against(rows(out3), expected, features=False)


def test_output_folder_rules(images, tiny_bundle, tmp_path):
    out = tmp_path / "o"
    first = sorted(all_inputs(images))[:3]
    listing = tmp_path / "three.txt"
    listing.write_text("\n".join(first))
    assert run("batch", listing, "--out", out, "--model", tiny_bundle, cwd=tmp_path).returncode in (0, 1)
    again = run("batch", listing, "--out", out, "--model", tiny_bundle, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: {out}: already holds batch results (pass --resume to continue it, or a new folder)"]
    other = run("batch", listing, "--out", out, "--model", tiny_bundle, "--resume", "--with-features", cwd=tmp_path)
    assert other.returncode == 2 and "without --with-features" in other.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    refused = run("batch", listing, "--out", foreign, "--model", tiny_bundle, cwd=tmp_path)
    assert refused.returncode == 2 and (foreign / "mine.txt").read_text() == "keep"
    missing = run("batch", tmp_path / "nope", "--out", tmp_path / "x", "--model", tiny_bundle, cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope'}: no such file or folder"]


def ray_leftovers() -> tuple[set, set]:
    """Ray processes and temporary folders of fgresq-sdk's local Rays, and /dev/shm entries."""
    procs = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            if b"fgresq-ray-" in cmd:
                procs.add((int(d), cmd.split(b"\0")[0]))
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    return procs, {p.name for p in tmp.glob("fgresq-ray-*")}


def test_ray_engine_equals_local_and_resumes(images, tiny_bundle, expected, tmp_path):
    """A local run of the first ten paths, then `--engine ray --resume` on the folder: the rest comes from Ray
    Data, row for row equal to the local Scorer, with the error rows; nothing of Ray is left afterwards."""
    pytest.importorskip("ray", reason="the ray extra is not installed")
    shm_before = set(os.listdir("/dev/shm"))
    procs_before, tmp_before = ray_leftovers()
    out = tmp_path / "scores.parquet"
    first = [p for p in expected if Path(p).name not in BAD][:10]
    listing = tmp_path / "first.txt"
    listing.write_text("\n".join(first))
    res = run("batch", listing, "--out", out, "--model", tiny_bundle, "--with-features", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(rows(out)) == 10
    t0 = time.monotonic()
    res = run("batch", images, "--out", out, "--model", tiny_bundle, "--with-features", "--resume",
              "--engine", "ray", "--object-store-mb", "100", "--actors", "2", "--batch-size", "4", cwd=tmp_path)
    took = time.monotonic() - t0
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert f"resuming: 10 inputs already in {out}, {len(expected) - 10} to go" in lines
    assert any(ln.startswith("ray: 2 actor(s) × 0.75 CPU (1 ONNX Runtime thread(s))") for ln in lines), lines
    assert lines[-1].startswith(f"wrote {len(expected) - 10} rows (2 errors) to ") and "engine ray" in lines[-1]
    check_against(rows(out), expected, features=True)
    # one run id per run (the local one, then Ray's); a slow run may flush more than one part (every FLUSH_S)
    parts = sorted(out.glob("part-*.parquet"))
    assert len({p.name.split("-")[1] for p in parts}) == 2 and not list(out.glob(".*")), parts
    # Nothing of the local Ray is left: processes, its temporary folder, shared memory.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ray_leftovers()[0] - procs_before:
        time.sleep(0.2)
    procs, tmps = ray_leftovers()
    assert not procs - procs_before, procs - procs_before
    assert not tmps - tmp_before, tmps - tmp_before
    assert not set(os.listdir("/dev/shm")) - shm_before
    # Everything done: a second resume has nothing to do and starts no Ray.
    again = run("batch", images, "--out", out, "--model", tiny_bundle, "--with-features", "--resume",
                "--engine", "ray", cwd=tmp_path)
    assert again.returncode == 0 and "wrote 0 rows (0 errors)" in again.stderr
    print(f"ray run: {took:.1f} s")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own, from its DataContext
def test_add_scores_to_a_users_dataset(images, tiny_bundle, expected, tmp_path):
    """The Python entry point on a dataset the user made: image bytes read by Ray's own reader."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    import logging

    from fgresq_sdk.batch import add_scores

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"fgresq-ray-test-{os.getpid()}"
    tmp.mkdir()
    try:
        ray.init(num_cpus=2, object_store_memory=100 << 20, include_dashboard=False, _temp_dir=str(tmp),
                 logging_level=logging.ERROR, log_to_driver=False)
        files = [p for p in expected if Path(p).name not in BAD][:12] + [str(images / "a" / "broken.jpg")]
        ds = ray.data.read_binary_files(files, include_paths=True)
        scored = add_scores(ds, tiny_bundle, bytes_column="bytes", actors=1, cpus_per_actor=1.0, batch_size=8)
        got = {r["path"]: r for r in scored.select_columns(["path", "score", "error"]).take_all()}
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    assert set(got) == set(files)
    for p in files:
        score, _, error = expected[p]
        if error is None:
            assert got[p]["error"] is None and got[p]["score"] == pytest.approx(score, abs=1e-6)
        else:
            assert got[p]["error"] == error and got[p]["score"] is None


CHILD = textwrap.dedent("""
    import sys
    from fgresq_sdk import scorer as sc
    from fgresq_sdk.batch import BatchOptions, run_batch

    original = sc.Scorer.iter_encode
    def counted(self, *a, **k):  # tells the test how far the run is
        for i, enc in enumerate(original(self, *a, **k), 1):
            print(f"scored {i}", flush=True)
            yield enc
    sc.Scorer.iter_encode = counted
    source, out, model, flush_rows = sys.argv[1:5]
    run_batch(source, out, BatchOptions(model=model, batch_size=1, flush_rows=int(flush_rows), flush_s=1e9))
""")


def _start_child(images, out, tiny_bundle, flush_rows, tmp_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(images), str(out), str(tiny_bundle),
                             str(flush_rows)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)


def _wait_scored(proc, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child ended early: {proc.stderr.read()[-2000:]}")
        if line.strip() == f"scored {n}":
            return
    proc.kill()
    raise AssertionError("child too slow")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_keeps_what_it_wrote_and_resume_completes(images, tiny_bundle, expected, tmp_path, sig):
    """SIGKILL: the whole parts written so far survive (flushed every 3 rows). SIGTERM: like Ctrl-C, the rows
    scored so far are flushed first (here nothing was flushed before). Then --resume finishes the job."""
    out = tmp_path / "out"
    proc = _start_child(images, out, tiny_bundle, 3 if sig == signal.SIGKILL else 10**9, tmp_path)
    try:
        _wait_scored(proc, 14)
        proc.send_signal(sig)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    kept = rows(out)
    if sig == signal.SIGKILL:
        assert 12 <= len(kept) < len(expected) and len(kept) % 3 == 0
    else:
        assert 13 <= len(kept) < len(expected)
    assert not list(out.glob(".*.tmp")) or sig == signal.SIGKILL
    res = run("batch", images, "--out", out, "--model", tiny_bundle, "--resume", cwd=tmp_path)
    assert res.returncode in (0, 1), res.stderr
    assert f"resuming: {len(kept)} inputs already in {out}" in res.stderr
    check_against(rows(out), expected, features=False)
    assert not list(out.glob(".*"))


# -- without the extras -----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,blocked,extra,command,missing", [
    (["batch", "x", "--out", "o"], ("pyarrow", "ray"), "batch", "batch", "pyarrow"),
    (["batch", "x", "--out", "o", "--engine", "ray"], ("ray",), "ray", "batch --engine ray", "ray"),
])
def test_batch_without_its_extra_names_it(tmp_path, argv, blocked, extra, command, missing):
    from test_runtime_only import runtime_only_code

    res = subprocess.run([sys.executable, "-c", runtime_only_code(argv, blocked)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and res.stdout == "" and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"error: {command} needs the {extra} extra: pip install 'fgresq-sdk[{extra}]' (missing: {missing})"]
    assert not (tmp_path / "o").exists()


def test_help(tmp_path):
    from cli_runner import run_cli

    for cmd in ("batch", "serve"):
        short, long = run_cli(cmd, "-h", cwd=tmp_path), run_cli(cmd, "--help", cwd=tmp_path)
        assert short.rc == 0 and "Usage:" in short.out and short.out == long.out
    assert "--resume" in run_cli("batch", "-h", cwd=tmp_path).out
