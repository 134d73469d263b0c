"""The prior's pair term: it shifts every comparison by u(a) − u(b) and nothing else (torch, the exported graph and
the numpy head alike), its direction solves its constraints, and its fit chooses what its grids say."""
from __future__ import annotations

import numpy as np
import pytest

from .conftest import HAS_TORCH, PRIOR_SHAPES, photo, random_convs
from .test_prior import prior_inputs

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch")


def _heads(rng, f: int):
    return rng.normal(size=(3, 2 * f)), rng.normal(size=(1, f))


def test_pair_direction_solves_its_constraints_and_refuses_heads_without_room():
    from fgresq_sdk.train.pair_term import pair_direction

    rng = np.random.default_rng(0)
    w, h = _heads(rng, 12)
    v = pair_direction(w, h)
    np.testing.assert_allclose(w[:, :12] @ v, [1, -1, 0], atol=1e-9)
    np.testing.assert_allclose(w[:, 12:] @ v, [-1, 1, 0], atol=1e-9)
    assert abs(float((h @ v)[0])) < 1e-9
    # two features cannot meet seven conditions
    w2, h2 = _heads(rng, 2)
    with pytest.raises(ValueError, match="no feature direction"):
        pair_direction(w2, h2)
    with pytest.raises(ValueError, match="feature size"):
        pair_direction(w, rng.normal(size=(1, 5)))


def test_pair_fit_recovers_a_rule_by_cv_and_weighs_it_by_val():
    from fgresq_sdk.train.pair_term import _acc, choose_beta, choose_pair_lambda, fit_logistic, head_margin

    rng = np.random.default_rng(1)
    n, s = 3000, 6
    dz = rng.normal(size=(n, s))
    y = (dz[:, 2] - 0.5 * dz[:, 4] + 0.2 * rng.normal(size=n) > 0).astype(float)
    lam, rows = choose_pair_lambda(dz, y, np.arange(n) % 20, lambdas=(0.1, 1e5))
    assert lam == 0.1 and rows[0]["cv_pair_acc"] > rows[1]["cv_pair_acc"] > 0.5
    w = fit_logistic(dz, y, lam)
    assert _acc(dz @ w, y) > 0.9 and abs(w[2]) > 5 * abs(w[0])
    # a head that guesses: the term gets weight; a head that is already right everywhere: ties keep beta 0
    beta, grid = choose_beta(rng.normal(size=n), dz @ w, y, betas=(0.0, 1.0, 4.0))
    assert beta > 0 and grid[0]["val_pair_acc"] < 0.6
    perfect = np.where(y > 0.5, 50.0, -50.0)
    assert choose_beta(perfect, dz @ w, y, betas=(0.0, 0.01))[0] == 0.0
    # the head's margin: "first" minus "second" logit, both presentation orders averaged (bias cancels)
    cw = rng.normal(size=(3, 8))
    q = rng.normal(size=(5, 4))
    a, b = np.array([0, 1, 2]), np.array([3, 4, 0])
    logit = lambda i, j: q[i] @ cw[:, :4].T + q[j] @ cw[:, 4:].T
    want = 0.5 * ((logit(a, b)[:, 0] - logit(a, b)[:, 1]) - (logit(b, a)[:, 0] - logit(b, a)[:, 1]))
    np.testing.assert_allclose(head_margin(cw, q, a, b), want, atol=1e-12)


def model_with_pair_term(seed: int = 0, **prior_keys):
    """(plain model, the same with a prior whose pair term is installed, (w, μ, σ, β)); `prior_keys` join the
    prior's config (e.g. junk_floor=True)."""
    import torch

    from fgresq_sdk.model import FGResQ
    from fgresq_sdk.train.fit_prior import PRIOR, attach_prior
    from fgresq_sdk.train.pair_term import install_pair_term

    torch.manual_seed(seed)
    base = FGResQ("fgresq-compact-cnn-ms2").eval()
    model = attach_prior(base, [random_convs(PRIOR_SHAPES, seed=1 + b) for b in range(2)], 3,
                         prior=dict(PRIOR, classical=True, pair=True, **prior_keys))
    with torch.no_grad():
        for lin in (model.prior.readout, model.prior.gate):  # non-zero biases: read_back needs distinct tensors
            lin.weight.normal_(0, 0.05)
            lin.bias.normal_(0, 0.1)
    rng = np.random.default_rng(seed)
    n = model.prior.readout.in_features
    w, mu, sd = rng.normal(size=n), rng.normal(size=n), rng.uniform(0.5, 2.0, size=n)
    install_pair_term(model, w, mu, sd, beta=3.0)
    return base, model, (w, mu, sd, 3.0)


def exported_and_read_back(model, x, q, s, tmp_path):
    """`model` exported, its graph checked against the torch features q and scores s of views x, and read back."""
    from fgresq_sdk.backends.onnxruntime_backend import OnnxRuntimeBackend
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.export.onnx_export import export_bundle
    from fgresq_sdk.export.read_back import read_back

    out = export_bundle(model, tmp_path / "bundle", source="test")
    feats, scores = OnnxRuntimeBackend(load_bundle(out)).encode(x.numpy())
    assert np.abs(scores.reshape(-1) - s.numpy()).max() <= 1e-4
    assert np.abs(feats - q.numpy()).max() <= 1e-3 * max(1.0, float(q.abs().max()))
    return read_back(out)[0]


@needs_torch
def test_the_pair_term_moves_every_comparison_by_its_difference_and_nothing_else(tmp_path):
    import torch

    from fgresq_sdk.heads import CompareHeadNP

    base, model, (w, mu, sd, beta) = model_with_pair_term()
    x = torch.randn(4, 3, 224, 224) * torch.tensor([0.1, 0.3, 0.6, 1.0]).reshape(4, 1, 1, 1)  # four noise levels
    with torch.no_grad():
        q0, _ = base(x)
        term, shift = model.prior(x, with_shift=True)
        q, s = model(x)
        stats = model.prior.statistics(x).double().numpy()
        score_without = torch.sigmoid(base.score_logit(q0) + term).squeeze(-1)
    # the score is the prior model's score without the term, exactly: it is computed before the shift
    assert torch.equal(s, score_without)
    u = 0.5 * beta * ((stats - mu) / sd) @ w  # the term written out from the statistics
    head = CompareHeadNP(model.compare_head.weight.detach().double().numpy(),
                         model.compare_head.bias.detach().double().numpy())
    ia, ib = np.array([0, 1, 2, 3, 0]), np.array([1, 2, 3, 0, 2])
    moved = head.pair_logits(q.double().numpy()[ia], q.double().numpy()[ib])
    plain = head.pair_logits(q0.double().numpy()[ia], q0.double().numpy()[ib])
    d = u[ia] - u[ib]
    assert np.abs(d).max() > 0.5  # the test moves something
    np.testing.assert_allclose(moved - plain, np.stack([d, -d, 0 * d], 1), atol=2e-4 * max(1.0, np.abs(d).max()))
    # the score head does not read the shift either (the exported graph could compute it from either features)
    with torch.no_grad():
        assert torch.allclose(model.score_logit(q), model.score_logit(q0), atol=1e-4)
    # the exported graph computes the same features and scores, and reads back into the same term
    again = exported_and_read_back(model, x, q, s, tmp_path)
    assert again.cfg["prior"]["pair"] is True
    assert torch.equal(again.prior.pair.weight, model.prior.pair.weight)
    assert torch.equal(again.prior.pair_direction, model.prior.pair_direction)


@needs_torch
def test_fit_prior_with_the_pair_term_fits_on_fit_pairs_and_weighs_it_on_val(tmp_path):
    import torch

    from fgresq_sdk.model import load_checkpoint, save_checkpoint
    from fgresq_sdk.train import fit_prior as fp
    from fgresq_sdk.train.manifest import Manifest
    from fgresq_sdk.train.pair_term import DEFAULT_BETAS, head_margin, ranked_pairs

    ckpt, stems = prior_inputs(tmp_path)
    model, rec = fp.fit_prior(ckpt, stems, tmp_path / "fit", tmp_path / "val", lambdas=(1.0,), cs=(0.0, 1.0),
                              check_sha256=False, pair=True)
    pt = rec["pair_term"]
    assert model.cfg["prior"]["pair"] is True and pt["beta"] in DEFAULT_BETAS
    assert pt["lambda"] == max(pt["lambda_grid"], key=lambda r: (round(r["cv_pair_acc"], 4), r["lambda"]))["lambda"]
    best = max(pt["beta_grid"], key=lambda r: (round(r["val_pair_acc"], 3), -r["beta"]))
    assert pt["beta"] == best["beta"]
    # an untrained head guesses; the statistics of 64-px degraded photos order them far better, so the term counts
    assert best["val_pair_acc"] > pt["beta_grid"][0]["val_pair_acc"] + 0.1 and pt["beta"] > 0
    # what the model now decides on val is what the record says
    val = Manifest.load(tmp_path / "val")
    ids = sorted(val.images)
    a, b, y, _ = ranked_pairs(val, ids)
    with torch.no_grad():
        from fgresq_sdk.train.datasets import TransformSpec, view_batches

        q = torch.cat([model(x)[0] for x in view_batches(val, ids, TransformSpec.from_config(model.cfg))])
    m = head_margin(model.compare_head.weight.detach().numpy(), q.double().numpy(), a, b)
    hit = np.mean(np.where(y > 0.5, m > 0, m < 0))
    assert hit == pytest.approx(best["val_pair_acc"], abs=0.01)
    again = load_checkpoint(save_checkpoint(model, tmp_path / "pair.safetensors", source="test"))
    assert torch.equal(again.prior.pair.weight, model.prior.pair.weight)


@needs_torch
def test_the_pair_term_can_keep_the_towers_data_while_the_score_reads_other_hard_negatives(tmp_path, monkeypatch):
    """fit_prior --pair-fit-manifest / --pair-val-manifest (the recipe's SCORE_JUNK_WEIGHTS): the score's readout
    learns from folders whose hard negatives are grey noise, the pair term is the one fitted on the towers' own
    folders alone, and of those only the images whose files differ (the hard negatives) are read again."""
    import torch

    from fgresq_sdk.train import fit_prior as fp
    from fgresq_sdk.train.synthetic import generate

    ckpt, stems = prior_inputs(tmp_path)
    photos = [(n, photo(n)) for n in ("astronaut", "coffee", "chelsea", "rocket", "brick", "camera", "grass", "gravel")]
    for tag, weights in (("plain", None), ("grey", {"grey_noise": 1.0})):
        kw = dict(size=64, levels=4, tasks=("deblurring", "denoising"), junk=True, junk_weights=weights)
        generate(photos[:6], tmp_path / f"fit-{tag}", seed=0, **kw)
        generate(photos[6:] + photos[:2], tmp_path / f"val-{tag}", seed=2, **kw)
    common = dict(lambdas=(1.0,), cs=(0.0, 1.0), check_sha256=False, pair=True)
    alone, rec_alone = fp.fit_prior(ckpt, stems, tmp_path / "fit-plain", tmp_path / "val-plain", **common)
    read = []
    real = fp.prior_statistics
    monkeypatch.setattr(fp, "prior_statistics", lambda m, man, ids, **kw: read.append(list(ids)) or real(m, man, ids, **kw))
    split, rec = fp.fit_prior(ckpt, stems, tmp_path / "fit-grey", tmp_path / "val-grey", **common,
                              pair_fit_manifest=tmp_path / "fit-plain", pair_val_manifest=tmp_path / "val-plain")
    # the score's own reads (every fit and val image), then only the towers' hard negatives
    assert len(read) == 4 and all(i.endswith("/J") for ids in read[2:] for i in ids)
    assert len(read[2]) == 6 * 2 and len(read[3]) == 4 * 2
    for k in ("lambda", "beta"):
        assert rec["pair_term"][k] == rec_alone["pair_term"][k]
    assert rec["pair_term"]["fit_manifest"].endswith("fit-plain")
    for got, want in ((split.prior.pair.weight, alone.prior.pair.weight), (split.prior.pair.bias, alone.prior.pair.bias),
                      (split.prior.pair_direction, alone.prior.pair_direction)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    # ... while the score's readout learnt other hard negatives
    assert not torch.allclose(split.prior.readout.weight, alone.prior.readout.weight)
