"""`fgresq-sdk train --compile` (train/compiled.py): torch.compile of the towers in full training batches."""
from __future__ import annotations

import json

import pytest

from conftest import needs_torch

pytestmark = needs_torch

torch = pytest.importorskip("torch")


def _needs_toolchain():
    from fgresq_sdk.train.compiled import toolchain_problem

    problem = toolchain_problem()
    if problem:
        pytest.skip(f"torch.compile does not work here: {problem}")


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory):
    from test_train import make_manifest

    root = tmp_path_factory.mktemp("compiled_data")
    make_manifest(root)
    return root


def _cfg(name: str, **over) -> dict:
    cfg = {"name": name, "model": "fgresq-compact-cnn-log", "log_every": 1, "threads": 2,
           "data": {"resize": 256, "crop": 224, "hflip": True},
           "dfl": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
           "fgresq": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1}}
    cfg.update(over)
    return cfg


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "logs.jsonl").read_text().splitlines()]


def test_full_batches_run_the_graph_short_ones_eagerly_with_the_same_values():
    """The graph is built for one batch size; a shorter batch (a scene's last) takes the eager path, and both give
    the eager function's values up to float noise, gradients included."""
    _needs_toolchain()
    from fgresq_sdk.model import FGResQ
    from fgresq_sdk.train.compiled import FullBatchCompiled, step_callable

    torch.manual_seed(0)
    model = FGResQ("fgresq-compact-cnn-log").train()
    features = FullBatchCompiled(model.quality_features, 6)
    assert step_callable(model.quality_features, 6, False) == model.quality_features
    for n in (6, 4, 6):
        x = torch.rand(n, 3, 64, 64)  # the towers pool over any size; a small view keeps the test quick
        model.zero_grad(set_to_none=True)
        got = features(x)
        got.square().sum().backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        want = model.quality_features(x)
        want.square().sum().backward()
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), n
        assert grads
        for k, p in model.named_parameters():  # fused kernels sum in another order: compare at each tensor's scale
            if k in grads:
                assert float((grads[k] - p.grad).abs().max()) <= 1e-4 * float(p.grad.abs().max()) + 1e-6, (n, k)
    assert features.calls == {"compiled": 2, "eager": 1}


def test_compiled_run_trains_both_stages_like_an_eager_one_up_to_float_noise(manifest_dir, tmp_path):
    """A compiled run logs the same losses step by step as an eager run of the same seed, up to float noise, and
    says in its log that it was compiled; a second compiled run repeats the first's weights exactly (one machine)."""
    _needs_toolchain()
    from fgresq_sdk.model import load_checkpoint
    from fgresq_sdk.train.run import run_training

    from test_train import _steps

    runs = {}
    for key, compiled in (("eager", False), ("compiled", True), ("again", True)):
        out = tmp_path / key
        run_training(_cfg(key), out, manifest=manifest_dir, progress=False, compile_steps=compiled)
        start = _log(out)[0]
        assert start["compile"] == {"requested": compiled, "active": compiled}
        assert json.loads((out / "config.json").read_text())["compile"] is compiled
        runs[key] = out
    again = load_checkpoint(runs["again"] / "model.safetensors").state_dict()
    for k, v in load_checkpoint(runs["compiled"] / "model.safetensors").state_dict().items():
        assert torch.equal(v, again[k]), k
    eager, compiled = _steps(runs["eager"] / "logs.jsonl"), _steps(runs["compiled"] / "logs.jsonl")
    assert eager.keys() == compiled.keys() and {k[0] for k in eager} == {"dfl", "fgresq"}
    for k, v in eager.items():
        assert compiled[k] == pytest.approx(v, rel=1e-3, abs=1e-4), k
    wa = load_checkpoint(runs["eager"] / "model.safetensors").state_dict()
    wb = load_checkpoint(runs["compiled"] / "model.safetensors").state_dict()
    assert wa.keys() == wb.keys()
    for k, v in wb.items():
        if v.is_floating_point():
            assert torch.allclose(v, wa[k], rtol=1e-2, atol=5e-3), k


def test_compile_is_refused_with_the_portable_kernels_before_anything_is_written(manifest_dir, tmp_path):
    from fgresq_sdk.train.config import TrainError
    from fgresq_sdk.train.run import run_training

    cfg = _cfg("portable", cpu_kernels="portable")
    with pytest.raises(TrainError, match="compile cannot be used with cpu_kernels 'portable'"):
        run_training(cfg, tmp_path / "run", manifest=manifest_dir, progress=False, compile_steps=True)
    with pytest.raises(TrainError, match="compile cannot be used"):  # the config's own key, the same rule
        run_training({**cfg, "compile": True}, tmp_path / "run", manifest=manifest_dir, progress=False)
    assert not (tmp_path / "run").exists()


def test_without_a_cxx_compiler_a_compiled_run_trains_eagerly_and_says_why(manifest_dir, tmp_path, monkeypatch,
                                                                          capsys):
    """Inductor pointed at a C++ compiler that does not exist (as on a machine without one): the run does not
    fail; stderr has one line with the reason, the log records it, and training is the eager one."""
    import torch._inductor.config as inductor_config

    from fgresq_sdk.train.compiled import toolchain_problem
    from fgresq_sdk.train.run import run_training

    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-c++")))
    torch._dynamo.reset()  # an earlier test's compiled probe would otherwise be reused from dynamo's memory
    problem = toolchain_problem()
    assert problem and "\n" not in problem
    out = tmp_path / "run"
    cfg = _cfg("no-cxx", dfl={"epochs": 1, "batch_size": 8, "lr": 1e-3}, fgresq={"epochs": 1, "batch_size": 4})
    run_training(cfg, out, manifest=manifest_dir, progress=False, compile_steps=True, stage="dfl")
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: --compile")]
    assert len(warnings) == 1 and "training eagerly" in warnings[0] and "Traceback" not in err
    start = _log(out)[0]
    assert start["compile"]["requested"] is True and start["compile"]["active"] is False
    assert start["compile"]["eager_because"]
    assert (out / "model.safetensors").is_file()
