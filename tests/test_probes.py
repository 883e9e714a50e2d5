"""Probes of lazy→rich and numerical stability (issue 20, item 4): each against a plain oracle or a known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from grokinterp.analysis.measures import MEASURE_COLUMNS, get_measures, progress_measures
from grokinterp.analysis.probes import (
    PROBES,
    collapsed,
    kernel_alignment,
    label_kernel,
    logit_margin,
    logit_std,
    ntk_gram,
    ntk_subset,
    representation_quality,
    softmax_collapse,
    update_weight_cosine,
)
from grokinterp.analysis.probes.rqi import parallelograms
from grokinterp.config import make_config
from grokinterp.errors import AnalysisError
from grokinterp.model.families import family_of


# -- NTK ------------------------------------------------------------------------------------------------------
def _brute_ntk(params: dict, cfg, tokens) -> torch.Tensor:
    """Plain oracle: the hooked module, one autograd.grad per input and class, full Jacobian rows."""
    model = family_of(cfg).hooked(cfg, init=False).load_params(params)
    names = [n for n, _ in model.named_parameters()]
    rows = []
    for t in tokens:
        logits = model(t[None])[0, -1]
        J = []
        for c in range(logits.shape[-1]):
            g = torch.autograd.grad(logits[c], list(model.parameters()), retain_graph=True, allow_unused=True)
            J.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1)
                                for gi, p in zip(g, model.parameters())]).double())
        rows.append(torch.stack(J))  # [C, P]
    J = torch.stack(rows)  # [N, C, P]
    assert names
    return torch.einsum("icp,jcp->ij", J, J)


@pytest.mark.parametrize("family", ["transformer", "mlp"])
def test_ntk_equals_brute_force_per_example_jacobians(family):
    kw = dict(d_model=16, n_heads=2, d_mlp=24) if family == "transformer" else dict(family="mlp", d_embed=6, d_hidden=12)
    cfg = make_config("tiny", p=7, **kw).model
    fam = family_of(cfg)
    p0 = fam.init_params(cfg)
    p1 = {k: v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in p0.items()}
    tokens = torch.tensor([[0, 1, 7], [3, 4, 7], [6, 6, 7], [2, 5, 7], [1, 1, 7]])
    stacked = {k: torch.stack([p0[k], p1[k]]) for k in p0}
    K = ntk_gram(stacked, cfg, tokens)
    assert K.shape == (2, 5, 5) and K.dtype == torch.float64
    for r, p in enumerate((p0, p1)):
        ref = _brute_ntk(p, cfg, tokens)
        torch.testing.assert_close(K[r], ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    assert not torch.allclose(K[0], K[1])  # the two checkpoints differ: the stack is not one model repeated


def test_alignment_of_the_label_kernel_is_one_and_scale_free():
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0])
    L = label_kernel(y)
    assert kernel_alignment(L, L).item() == pytest.approx(1.0, abs=1e-12)
    # a positive multiple plus a constant (removed by the centring) is still perfectly aligned
    assert kernel_alignment(3.5 * L + 2.0, L).item() == pytest.approx(1.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(8, 20, generator=g, dtype=torch.float64)
    a = kernel_alignment(torch.stack([X @ X.T, L]), L)
    assert a.shape == (2,) and a[0] < 0.9 and a[1] == pytest.approx(1.0)
    # the plain formula: <HKH, HLH> / (|HKH| |HLH|)
    H = torch.eye(8, dtype=torch.float64) - 1 / 8
    Kc, Lc = H @ X @ X.T @ H, H @ L @ H
    assert a[0].item() == pytest.approx(float((Kc * Lc).sum() / (Kc.norm() * Lc.norm())), rel=1e-12)


def test_alignment_bad_input_names_the_field():
    with pytest.raises(AnalysisError, match="one label"):
        kernel_alignment(torch.eye(4), label_kernel(torch.zeros(4, dtype=torch.long)))
    with pytest.raises(AnalysisError, match="labels"):
        label_kernel(torch.zeros(0, dtype=torch.long))
    with pytest.raises(AnalysisError, match="K"):
        kernel_alignment(torch.eye(3), label_kernel(torch.tensor([0, 1, 0, 1])))
    with pytest.raises(AnalysisError, match="n_inputs"):
        ntk_subset(torch.arange(10), torch.arange(10), n_inputs=0)
    with pytest.raises(AnalysisError, match="train"):
        ntk_subset(torch.zeros(0, dtype=torch.long), torch.arange(10))
    with pytest.raises(AnalysisError, match="tokens"):
        ntk_gram({"x": torch.zeros(1, 2)}, make_config("tiny", p=7).model, torch.zeros(0, 3, dtype=torch.long))


def test_ntk_subset_is_balanced_seeded_and_from_the_training_pairs():
    labels = torch.arange(100) % 10
    train = torch.arange(0, 100, 2)  # even indices: labels 0, 2, 4, 6, 8
    idx = ntk_subset(train, labels, n_inputs=12, n_classes=3, seed=5)
    assert set(idx.tolist()) <= set(train.tolist())
    counts = np.unique(labels[idx].numpy(), return_counts=True)[1]
    assert len(counts) == 3 and (counts == 4).all()
    assert torch.equal(idx, ntk_subset(train, labels, n_inputs=12, n_classes=3, seed=5))


# -- RQI ------------------------------------------------------------------------------------------------------
def test_parallelograms_are_every_nontrivial_one_once():
    p = 6
    L, R = parallelograms(p)
    seen = {(tuple(a), tuple(b)) for a, b in zip(L.tolist(), R.tolist())}
    brute = set()
    pairs = [(a, b) for a in range(p) for b in range(a, p)]
    for i, x in enumerate(pairs):
        for y in pairs[i + 1:]:
            if sum(x) == sum(y):
                brute.add((x, y))
    assert seen == brute and len(L) == len(brute)
    Lm, _ = parallelograms(p, modular=True)
    assert len(Lm) > len(L)


def test_rqi_planted_line_is_one_random_is_zero():
    p = 17
    g = torch.Generator().manual_seed(0)
    v = torch.randn(8, generator=g)
    line = torch.arange(p, dtype=torch.float32)[:, None] * v + 0.3  # a number line (offset removed by centring)
    assert representation_quality(line, p).item() == 1.0
    noisy = line + 1e-3 * torch.randn(p, 8, generator=g)
    assert representation_quality(noisy, p).item() == 1.0  # far inside the tolerance
    rand = torch.randn(3, p + 1, 32, generator=g)  # stacked, with an '=' row that is ignored
    r = representation_quality(rand, p)
    assert r.shape == (3,) and (r < 0.01).all()
    # a circle closes only the parallelograms with {a, b} = {c, d} — none of the non-trivial ones
    w = 2 * math.pi * 3 / p
    circle = torch.stack([torch.cos(w * torch.arange(p)), torch.sin(w * torch.arange(p))], 1)
    assert representation_quality(circle, p).item() < 0.05
    # the tolerance is relative to the embedding scale
    assert representation_quality(1e4 * noisy, p).item() == 1.0


def test_rqi_undefined_and_bad_input():
    with pytest.raises(AnalysisError, match="W_E.*without a token embedding"):
        representation_quality(None, 7)
    with pytest.raises(AnalysisError, match="tol"):
        representation_quality(torch.zeros(7, 2), 7, tol=0)
    with pytest.raises(AnalysisError, match="W_E"):
        representation_quality(torch.zeros(5, 2), 7)
    with pytest.raises(AnalysisError, match="p"):
        representation_quality(torch.zeros(2, 2), 2)


# -- softmax collapse, update cosine, logit scale -------------------------------------------------------------
def test_softmax_collapse_scaled_logits_collapse_small_do_not():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 11, generator=g)
    y = z.argmax(-1)  # correctly classified: only the scale decides
    assert softmax_collapse(z, y).item() == 0.0
    assert softmax_collapse(1e5 * z, y).item() == 1.0  # top-two gaps of randn rows exceed ~1e-3
    # the rule equals "the float32 softmax of the label is exactly 1" at every scale
    for s in (1, 10, 20, 30, 50, 100):
        zs = (s * z).float()
        brute = torch.tensor([float(torch.softmax(row, -1)[int(t)]) == 1.0 for row, t in zip(zs, y)])
        assert torch.equal(collapsed(zs, y), brute)
    # a wrong label never collapses, however large the logits
    assert softmax_collapse(1000 * z, (y + 1) % 11).item() == 0.0
    # margin needed against equal other logits: between 24 ln 2 ≈ 16.6 (each term absorbed on its own) and
    # 16.6 + ln(C − 1) (their exact sum absorbed), by the summation order
    C = 11
    below, above = torch.zeros(1, C), torch.zeros(1, C)
    below[0, 0], above[0, 0] = 24 * math.log(2) - 1, 24 * math.log(2) + math.log(C - 1) + 1
    assert not collapsed(below, torch.tensor([0])).item() and collapsed(above, torch.tensor([0])).item()


def test_softmax_collapse_bad_input_names_the_field():
    with pytest.raises(AnalysisError, match="labels"):
        softmax_collapse(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long))
    with pytest.raises(AnalysisError, match="labels"):
        softmax_collapse(torch.zeros(3, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(AnalysisError, match="labels"):
        softmax_collapse(torch.zeros(3, 5), torch.full((3,), 5))


def test_update_weight_cosine_known_steps():
    g = torch.Generator().manual_seed(0)
    theta = {"a": torch.randn(2, 4, 3, generator=g), "b": torch.randn(2, 5, generator=g)}
    decay = {k: v - 0.01 * v for k, v in theta.items()}  # a pure weight-decay step
    grow = {k: 1.5 * v for k, v in theta.items()}  # NLM: scaled up along the weights
    assert torch.allclose(update_weight_cosine(theta, decay), torch.full((2,), -1.0, dtype=torch.float64))
    assert torch.allclose(update_weight_cosine(theta, grow), torch.full((2,), 1.0, dtype=torch.float64))
    # an update orthogonal to θ (⊥Grad): remove θ's component from a random direction
    d = {k: torch.randn(v.shape, generator=g) for k, v in theta.items()}
    flat_t = torch.cat([v.reshape(2, -1) for v in theta.values()], 1)
    flat_d = torch.cat([v.reshape(2, -1) for v in d.values()], 1)
    coef = (flat_d * flat_t).sum(1) / (flat_t * flat_t).sum(1)
    ortho = {k: theta[k] + d[k] - coef.view(2, *[1] * (v.ndim - 1)) * theta[k] for k, v in d.items()}
    assert update_weight_cosine(theta, ortho).abs().max() < 1e-6
    assert torch.isnan(update_weight_cosine(theta, theta)).all()  # no update: undefined
    with pytest.raises(AnalysisError, match="params"):
        update_weight_cosine(theta, {"a": theta["a"]})


def test_logit_scale_equals_the_plain_loops():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 6, 5, generator=g) * 3
    y = torch.randint(0, 5, (2, 6), generator=g)
    ref_m = [np.mean([float(z[r, i, y[r, i]] - max(z[r, i, j] for j in range(5) if j != y[r, i])) for i in range(6)])
             for r in range(2)]
    ref_s = [np.mean([float(np.std(z[r, i].numpy())) for i in range(6)]) for r in range(2)]
    assert logit_margin(z, y).tolist() == pytest.approx(ref_m, rel=1e-6)
    assert logit_std(z).tolist() == pytest.approx(ref_s, rel=1e-5)
    assert logit_std(z + 100).tolist() == pytest.approx(ref_s, rel=1e-5)  # shift-free, as the softmax
    with pytest.raises(AnalysisError, match="logits"):
        logit_std(torch.zeros(0, 5))


# -- the measures ---------------------------------------------------------------------------------------------
def test_probes_are_opt_in_measures(tiny_run):
    assert [c for m in get_measures() for c in m.columns] == list(MEASURE_COLUMNS[1:])  # default table unchanged
    eps = tiny_run.epochs[[0, 1, 2, -1]]
    df = progress_measures(tiny_run, epochs=eps, measures=["losses", *PROBES], chunk=4)
    for c in ("sc_train", "sc_test", "update_weight_cos", "logit_std", "logit_margin", "rqi", "ntk_alignment"):
        assert c in df.columns and df.attrs["definitions"][c]
    assert np.isnan(df["update_weight_cos"].iloc[0]) and df["update_weight_cos"].iloc[1:].notna().all()
    assert df["ntk_alignment"].between(-1, 1).all() and df["rqi"].between(0, 1).all()
    # chunks of one checkpoint: the update cosine reads the previous chunk's last checkpoint
    one = progress_measures(tiny_run, epochs=eps, measures=["update_cos", "logit_scale"], chunk=1)
    np.testing.assert_allclose(one["update_weight_cos"], df["update_weight_cos"], rtol=1e-9)
    # the plain computation from the stored parameters
    a, b = tiny_run.params(int(eps[1])), tiny_run.params(int(eps[2]))
    ref = update_weight_cosine({k: v[None] for k, v in a.items()}, {k: v[None] for k, v in b.items()})
    assert df["update_weight_cos"].iloc[2] == pytest.approx(float(ref[0]), rel=1e-9)


def test_probe_measures_say_undefined_for_a_family_without_an_embedding(tmp_path):
    import grokinterp as g

    cfg = make_config("tiny", p=7, family="mlp", d_embed=0, d_hidden=16, epochs=20, every=10, eval_every=10)
    run = g.train(cfg, tmp_path / "mlp", progress=False)
    df = progress_measures(run, measures=["rqi", "logit_scale", "ntk_alignment"])
    assert df["rqi"].isna().all() and "without a token embedding" in df.attrs["definitions"]["rqi"]
    assert df["logit_std"].notna().all() and df["ntk_alignment"].notna().all()


# -- the CLI --------------------------------------------------------------------------------------------------
def test_cli_probes_table_and_bad_input(tiny_run, tmp_path, capsys):
    import pandas as pd

    from grokinterp.cli import main

    out = tmp_path / "probes.csv"
    assert main(["probes", str(tiny_run.path), "--max-checkpoints", "3", "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert len(df) == 3 and {"sc_train", "update_weight_cos", "logit_margin", "rqi"} <= set(df.columns)
    assert "ntk_alignment" not in df.columns  # opt-in: not among the cheap probes
    assert main(["probes", str(tiny_run.path), "--probes", "rqi", "--max-checkpoints", "2", "--definitions"]) == 0
    assert "parallelograms" in capsys.readouterr().out
    bad = [(["--probes", "bogus"], "--probes"), (["--ntk-inputs", "0"], "--ntk-inputs"),
           (["--max-checkpoints", "1"], "--max-checkpoints"),
           (["--out", str(tmp_path / "missing" / "x.csv")], "--out")]
    for extra, field in bad:
        assert main(["probes", str(tiny_run.path), *extra]) == 2
        assert field in capsys.readouterr().err
    assert main(["probes", str(tmp_path / "no-run")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


def test_rqi_gram_shortcut_equals_the_plain_norms_and_sampling_agrees():
    from grokinterp.analysis.probes.rqi import sampled_parallelograms

    p, g = 13, torch.Generator().manual_seed(3)
    E = torch.arange(p, dtype=torch.float64)[:, None] * torch.randn(1, 5, generator=g, dtype=torch.float64)
    E = E + 0.6 * torch.randn(p, 5, generator=g, dtype=torch.float64)  # a noisy line: some close, some do not
    L, R = parallelograms(p)
    Ec = E - E.mean(0)
    s = Ec.pow(2).sum(-1).mean().sqrt()
    for tol in (0.1, 0.3, 0.6):
        gap = (Ec[L[:, 0]] + Ec[L[:, 1]] - Ec[R[:, 0]] - Ec[R[:, 1]]).norm(dim=-1)
        ref = float((gap <= tol * s).double().mean())
        assert 0 < ref < 1 or tol == 0.1
        assert representation_quality(E, p, tol=tol).item() == pytest.approx(ref, abs=1e-12)
    # above MAX_EXACT_P a seeded sample of valid, non-trivial parallelograms
    Ls, Rs = sampled_parallelograms(300, n=5000)
    assert len(Ls) == 5000 and torch.equal(Ls.sum(1), Rs.sum(1)) and (Rs >= 0).all() and (Rs < 300).all()
    line = torch.arange(300.0)[:, None] * torch.ones(1, 3)
    assert representation_quality(line, 300).item() == 1.0


def test_rqi_circle_planted_circles_are_one_random_and_lines_are_not():
    from grokinterp.analysis.probes.rqi import circle_quality

    p, g = 23, torch.Generator().manual_seed(0)
    x = torch.arange(p, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(16, 4, generator=g, dtype=torch.float64))  # orthonormal 4 columns of R^16

    def ring(k):
        w = 2 * math.pi * k / p
        return torch.stack([torch.cos(w * x), torch.sin(w * x)], 1)

    ellipse = ring(5) @ torch.tensor([[3.0, 0.5], [0.2, 1.0]], dtype=torch.float64) @ Q[:, :2].T
    assert circle_quality(ellipse, p).item() == pytest.approx(1.0)
    two = ring(5) @ Q[:, :2].T + 0.7 * ring(9) @ Q[:, 2:].T  # two frequencies in orthogonal planes
    assert circle_quality(two, p).item() == pytest.approx(1.0)
    assert representation_quality(two, p).item() < 0.05  # while the integer RQI does not see circles
    assert circle_quality(two, p, freqs=[9]).item() == pytest.approx(1.0)  # only the frequencies asked for
    assert circle_quality(two, p, freqs=[2, 3]).item() < 0.2
    with pytest.raises(AnalysisError, match="freqs"):
        circle_quality(two, p, freqs=[12])
    r = circle_quality(torch.randn(3, p, 64, generator=g), p)
    assert r.shape == (3,) and (r < 0.08).all()
    assert circle_quality(x[:, None] * torch.ones(1, 4, dtype=torch.float64), p).item() < 0.08
    with pytest.raises(AnalysisError, match="W_E"):
        circle_quality(None, p)


def test_probes_figure_draws_the_columns_it_has():
    import pandas as pd

    from grokinterp.viz.plotting import probes_figure

    df = pd.DataFrame({"epoch": [0, 10, 20], "sc_train": [0, 0.5, 1.0], "rqi": [np.nan] * 3,
                       "update_weight_cos": [np.nan, 0.2, 0.6]})
    fig = probes_figure(df)
    assert [t.name for t in fig.data] == ["sc_train", "update_weight_cos"]  # the all-NaN RQI panel is left out
    assert probes_figure(pd.DataFrame({"epoch": [0], "train_loss": [1.0]})) is None


def test_logit_probes_streamed_equal_whole_grid_and_the_plain_computation(tiny_run):
    from grokinterp.analysis.inputs import residue_outputs, run_task_arrays
    from grokinterp.model.grid import grid_outputs

    eps = tiny_run.epochs[[1, -1]]
    cols = ["sc_train", "sc_test", "logit_std", "logit_margin"]
    whole = progress_measures(tiny_run, epochs=eps, measures=["softmax_collapse", "logit_scale"])
    rows = progress_measures(tiny_run, epochs=eps, measures=["softmax_collapse", "logit_scale"], rows=4)
    np.testing.assert_allclose(rows[cols].to_numpy(), whole[cols].to_numpy(), rtol=1e-6)
    labels, train, test, valid = run_task_arrays(tiny_run)
    params, cfg = residue_outputs({k: v[None] for k, v in tiny_run.params(int(eps[-1])).items()}, tiny_run.config.model)
    L = grid_outputs(params, cfg).logits.reshape(1, tiny_run.p ** 2, -1)
    assert whole["sc_train"].iloc[-1] == pytest.approx(float(softmax_collapse(L[:, train], labels[train][None])))
    assert whole["logit_margin"].iloc[-1] == pytest.approx(float(logit_margin(L[:, train], labels[train][None])))
    assert whole["logit_std"].iloc[-1] == pytest.approx(float(logit_std(L[:, valid])), rel=1e-6)


def test_progress_measures_on_a_digits_run_say_undefined_naming_the_task(tmp_path):
    """The progress measures read the p × p grid of an algebraic task: on a dataset task they refuse with a message
    naming the task and pointing at the vector probes."""
    import grokinterp as g

    cfg = make_config("omnigrok-digits", d_hidden=16, epochs=2, every=2, eval_every=1, log_early=0, train_size=300)
    run = g.train(cfg, tmp_path / "digits", progress=False)
    with pytest.raises(AnalysisError, match="undefined for the dataset task 'digits'.*vector_probes"):
        progress_measures(run, measures=["losses", "softmax_collapse"])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    import grokinterp as g

    cfg = make_config("omnigrok-digits", d_hidden=16, epochs=6, every=2, eval_every=1, log_early=0, train_size=300,
                      loss="cross_entropy", init_scale=8.0)
    return g.train(cfg, tmp_path_factory.mktemp("vprobes") / "digits", progress=False)


def test_vector_probes_equal_the_plain_computation_on_a_digits_run(digits_run):
    """sc / logit std / margin from the plain float32 logits of the run's model, loss as checkpoint_metrics, the
    update–weight cosine from the flattened parameters; RQI NaN with the reason (the NTK: its own tests below)."""
    from grokinterp.analysis.probes.vectors import vector_probes
    from grokinterp.analysis.vectors import checkpoint_metrics

    run = digits_run
    eps = np.asarray(run.epochs)
    assert len(eps) >= 3
    df = vector_probes(run, PROBES, eps, chunk=2)  # chunks of 2: the cosine crosses chunk boundaries
    assert df["epoch"].tolist() == eps.tolist()
    (xtr, ytr), (xte, yte) = run.train_data(), run.test_data()
    flat = []
    for k, e in enumerate(eps):
        model = run.model(int(e))
        with torch.no_grad():
            Ltr, Lte = (model(x).float().reshape(len(x), -1) for x in (xtr, xte))
        logp = torch.log_softmax(Ltr, -1)
        assert df["sc_train"].iloc[k] == (logp[torch.arange(len(ytr)), ytr] == 0).double().mean().item()
        logp = torch.log_softmax(Lte, -1)
        assert df["sc_test"].iloc[k] == (logp[torch.arange(len(yte)), yte] == 0).double().mean().item()
        Lall = torch.cat([Ltr, Lte]).double()
        assert df["logit_std"].iloc[k] == pytest.approx(Lall.std(-1, unbiased=False).mean().item(), rel=1e-5)
        other = Ltr.double().clone()
        other[torch.arange(len(ytr)), ytr] = -math.inf
        margin = (Ltr.double()[torch.arange(len(ytr)), ytr] - other.max(-1).values).mean().item()
        assert df["logit_margin"].iloc[k] == pytest.approx(margin, rel=1e-6)
        flat.append(torch.cat([v.double().flatten() for _, v in sorted(run.params(int(e)).items())]))
    cos = [math.nan] + [torch.nn.functional.cosine_similarity(b - a, a, dim=0).item() for a, b in zip(flat, flat[1:])]
    np.testing.assert_allclose(df["update_weight_cos"], cos, rtol=1e-5)
    assert np.isfinite(df["update_weight_cos"].iloc[1:]).all()
    assert df["sc_train"].between(0, 1).all() and (df["logit_margin"] != 0).any()
    cm = checkpoint_metrics(run, eps)
    np.testing.assert_allclose(df["train_loss"], cm["train_loss"], rtol=1e-6)
    assert df[["rqi", "rqi_circle"]].isna().all().all() and df["ntk_alignment"].between(-1, 1).all()
    assert "undefined for this task" in df.attrs["definitions"]["rqi"]
    assert "training examples" in df.attrs["definitions"]["ntk_alignment"]
    with pytest.raises(AnalysisError, match="probes: unknown"):
        vector_probes(run, ["bogus"])


def test_cli_probes_on_a_digits_run(digits_run, tmp_path, capsys):
    import pandas as pd

    from grokinterp.analysis.probes.vectors import vector_probes
    from grokinterp.cli import main

    out = tmp_path / "probes.csv"
    assert main(["probes", str(digits_run.path), "--probes", "all", "--out", str(out), "--definitions"]) == 0
    assert "undefined for this task" in capsys.readouterr().out
    df = pd.read_csv(out)
    want = vector_probes(digits_run, PROBES)
    assert {"sc_train", "sc_test", "logit_std", "logit_margin", "update_weight_cos"} <= set(df.columns)
    np.testing.assert_allclose(df[want.columns].to_numpy(float), want.to_numpy(float), rtol=1e-12)
    assert df["ntk_alignment"].notna().all()


def _brute_vector_ntk(params: dict, cfg, x) -> torch.Tensor:
    """Plain oracle over input vectors: the hooked MLP, one autograd.grad per example and class."""
    model = family_of(cfg).hooked(cfg, init=False).load_params(params)
    rows = []
    for xi in x:
        logits = model(xi[None]).reshape(-1)
        J = []
        for c in range(logits.shape[-1]):
            g = torch.autograd.grad(logits[c], list(model.parameters()), retain_graph=True, allow_unused=True)
            J.append(torch.cat([(torch.zeros_like(p) if gi is None else gi).reshape(-1)
                                for gi, p in zip(g, model.parameters())]).double())
        rows.append(torch.stack(J))
    J = torch.stack(rows)  # [N, C, P]
    return torch.einsum("icp,jcp->ij", J, J)


def test_vector_ntk_alignment_equals_the_per_example_jacobian_oracle(digits_run):
    """NTK–label alignment over input vectors: the kernel equals the brute-force per-example-Jacobian kernel of the
    hooked MLP at two checkpoints, and vector_probes' column is its centred alignment with Y Yᵀ of the seeded
    class-balanced subset of the training examples."""
    from grokinterp.analysis.probes.vectors import vector_probes

    run = digits_run
    cfg = run.config.model
    xtr, ytr = run.train_data()
    idx = ntk_subset(torch.arange(len(ytr)), ytr, n_inputs=9, n_classes=3, seed=4)
    assert len(idx) == 9 and len(set(ytr[idx].tolist())) == 3
    eps = np.asarray(run.epochs)[[0, -1]]
    df = vector_probes(run, ["ntk_alignment"], eps, ntk_inputs=9, ntk_classes=3, ntk_seed=4)
    K = ntk_gram(run.stacks(epochs=eps), cfg, xtr[idx])
    assert K.shape == (2, 9, 9)
    for k, e in enumerate(eps):
        ref = _brute_vector_ntk(run.params(int(e)), cfg, xtr[idx])
        torch.testing.assert_close(K[k], ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
        want = kernel_alignment(ref, label_kernel(ytr[idx])).item()
        assert df["ntk_alignment"].iloc[k] == pytest.approx(want, abs=1e-5)
    assert not torch.allclose(K[0], K[1])


def test_vector_ntk_definition_states_the_subset_as_drawn(digits_run):
    """The column's definition names the subset actually used: ntk_subset clamps more labels than the run has (and
    fewer inputs than labels), so '50 labels × 0 examples' would be a false record of what was computed."""
    from grokinterp.analysis.probes.vectors import vector_probes

    eps = np.asarray(digits_run.epochs)[[-1]]
    _, ytr = digits_run.train_data()
    for n_inputs, n_classes in [(9, 3), (32, 50), (3, 4)]:
        df = vector_probes(digits_run, ["ntk_alignment"], eps, ntk_inputs=n_inputs, ntk_classes=n_classes)
        idx = ntk_subset(torch.arange(len(ytr)), ytr, n_inputs=n_inputs, n_classes=n_classes, seed=0)
        k = len(set(ytr[idx].tolist()))
        text = df.attrs["definitions"]["ntk_alignment"]
        assert f"{k} labels" in text and " 0 examples" not in text, text
        if len(idx) % k == 0 and len(idx) // k == n_inputs // k:
            assert f"{k} labels × {len(idx) // k} examples" in text, text


def test_vector_ntk_alignment_controls_training_raises_it_shuffled_labels_do_not(tmp_path):
    """Controls: training a digits MLP (cross-entropy, lr 1e-2) rotates its NTK towards the labels — the alignment
    of the trained checkpoint is above the untrained one — while the same trained kernel against shuffled labels of
    the same examples aligns far lower: at chance, which is above 0 (both centred kernels are positive
    semi-definite, so their inner product is ≥ 0), and below even the untrained kernel's alignment with the true
    labels (digits of one class look alike, so the initial NTK of the inputs is already aligned)."""
    import grokinterp as g
    from grokinterp.analysis.probes.vectors import vector_probes

    cfg = make_config("omnigrok-digits", d_hidden=16, epochs=30, every=10, eval_every=10, log_early=0, train_size=300,
                      loss="cross_entropy", init_scale=1.0, lr=1e-2)
    run = g.train(cfg, tmp_path / "digits", progress=False)
    assert run.evals["train_acc"].iloc[-1] > 0.9  # it learned
    df = vector_probes(run, ["ntk_alignment"], ntk_inputs=24, ntk_classes=4)
    a = df["ntk_alignment"].to_numpy()
    assert a[-1] > a[0] + 0.1, a
    xtr, ytr = run.train_data()
    idx = ntk_subset(torch.arange(len(ytr)), ytr, n_inputs=24, n_classes=4, seed=0)
    K = ntk_gram(run.stacks(epochs=[int(run.epochs[-1])]), run.config.model, xtr[idx])
    assert kernel_alignment(K, label_kernel(ytr[idx])).item() == pytest.approx(a[-1], abs=1e-9)
    gen = torch.Generator().manual_seed(0)
    shuffled = [kernel_alignment(K, label_kernel(ytr[idx][torch.randperm(len(idx), generator=gen)])).item()
                for _ in range(20)]
    assert min(shuffled) >= -1e-9 and np.mean(shuffled) < 0.3 and max(shuffled) < a[0] < a[-1] - 0.1, shuffled
