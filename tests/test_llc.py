"""The local learning coefficient (issue 20): oracles with known λ, stacking, diagnostics, bad input, CLI,
and devinterp itself where it is installed (the ``[slt]`` extra)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from grokinterp.analysis.llc import (
    LLCWarning,
    SGLDConfig,
    calibrate,
    default_nbeta,
    llc_over_checkpoints,
    sample_llc,
    split_rhat,
)
from grokinterp.errors import AnalysisError


def _exact(h, nbeta, gamma, eps):
    """E[nβ (L − L*)] of SGLD's stationary law for L = ½ Σ h_i w_i² (per coordinate an AR(1) with
    a = nβ h + γ: variance 1 / (a (1 − ε a / 4)))."""
    a = nbeta * h + gamma
    return float(np.sum(nbeta * h / (2 * a * (1 - eps * a / 4))))


def _quadratic(h):
    h = torch.as_tensor(h, dtype=torch.float32)

    def loss(P, idx):
        return 0.5 * (P["w"].pow(2) * h).sum(1)

    return loss


def test_a_quadratic_potential_gives_d_over_2():
    """Regular model: λ = d / 2; the estimate matches SGLD's exact stationary value within 5 %."""
    d = 6
    h = np.linspace(0.5, 2.0, d)
    cfg = SGLDConfig(epsilon=1e-3, gamma=1.0, nbeta=100.0, chains=8, draws=2000, burnin=200, batch_size=None)
    r = sample_llc({"w": torch.zeros(1, d)}, _quadratic(h), 1, cfg)
    exact = _exact(h, 100.0, 1.0, 1e-3)
    assert r.mean[0] == pytest.approx(exact, rel=0.05)
    assert r.mean[0] == pytest.approx(d / 2, rel=0.10)
    assert r.reliable[0], r.flags
    assert r.acceptance.mean() > 0.9  # a small step on a quadratic: MALA accepts nearly everything


def test_linear_regression_recovers_d_over_2_with_minibatches():
    """y = x·w + noise, Gaussian likelihood: L_n is quadratic around the least-squares w*, λ = d / 2."""
    g = torch.Generator().manual_seed(0)
    n, d = 2000, 10
    X = torch.randn(n, d, generator=g)
    y = X @ torch.randn(d, generator=g) + torch.randn(n, generator=g)
    w_star = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]

    def loss(P, idx):  # P["w"] [R, d], idx [R, m]
        pred = (X[idx] * P["w"][:, None]).sum(-1)
        return 0.5 * (y[idx] - pred).pow(2).mean(1)

    cfg = SGLDConfig(epsilon=1e-3, gamma=1.0, chains=4, draws=1500, burnin=200, batch_size=100, seed=1)
    r = sample_llc({"w": w_star[None]}, loss, n, cfg)
    assert r.nbeta == pytest.approx(default_nbeta(100))  # the stated default rule: m / ln m
    expected = _exact(torch.linalg.eigvalsh(X.T @ X / n).numpy(), r.nbeta, 1.0, 1e-3)
    assert r.mean[0] == pytest.approx(expected, rel=0.10)
    assert r.mean[0] == pytest.approx(d / 2, rel=0.15)


def test_a_degenerate_parametrisation_has_a_lower_coefficient():
    """θ = w1 w2 with L = ½ (w1 w2 − 1)²: a curve of minima, λ = 1/2 < d / 2 = 1."""

    def loss(P, idx):
        return 0.5 * (P["w"][:, 0] * P["w"][:, 1] - 1).pow(2)

    cfg = SGLDConfig(epsilon=2e-4, gamma=10.0, nbeta=1000.0, chains=6, draws=1500, burnin=300, batch_size=None)
    r = sample_llc({"w": torch.ones(1, 2)}, loss, 1, cfg)
    assert r.mean[0] == pytest.approx(0.5, abs=0.1)


def test_stacked_checkpoints_equal_each_estimated_alone_and_repeat_bitwise():
    """K points in one stack = each point alone (common random numbers: chunking changes nothing but
    rounding); the same seed gives the same bits."""
    h = np.array([1.0, 2.0, 3.0])
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.05], [0.3, 0.0, -0.1]])
    cfg = SGLDConfig(epsilon=1e-3, gamma=5.0, nbeta=50.0, chains=3, draws=200, batch_size=None)
    stacked = sample_llc({"w": pts}, _quadratic(h), 1, cfg)
    for k in range(3):
        alone = sample_llc({"w": pts[k: k + 1]}, _quadratic(h), 1, cfg)
        np.testing.assert_allclose(alone.llc[0], stacked.llc[k], rtol=1e-4, atol=1e-4)
    again = sample_llc({"w": pts}, _quadratic(h), 1, cfg)
    assert np.array_equal(again.llc, stacked.llc) and np.array_equal(again.trace, stacked.trace)


def test_split_rhat_is_one_for_agreeing_chains_and_large_for_disagreeing_ones():
    rng = np.random.default_rng(0)
    same = rng.normal(size=(4, 400))
    assert split_rhat(same) == pytest.approx(1.0, abs=0.02)
    apart = same + np.arange(4)[:, None]  # chains centred at 0, 1, 2, 3
    assert split_rhat(apart) > 1.5
    assert math.isnan(split_rhat(same[:, :3]))


def test_diagnostics_flag_divergence_nan_and_a_point_that_is_not_a_minimum():
    h = np.array([1.0, 1.0])
    # ε nβ h = 8 > 4: the discretised dynamics are unstable and blow up
    bad = sample_llc({"w": torch.zeros(1, 2)}, _quadratic(h), 1,
                     SGLDConfig(epsilon=0.08, gamma=0.0, nbeta=100.0, chains=2, draws=300, batch_size=None))
    assert not bad.reliable[0]
    assert {"nonfinite", "diverged"} & set(bad.flags[0]) or "acceptance" in bad.flags[0]
    # w* away from the minimum, no localization: the chain finds lower loss, λ̂ < 0
    neg = sample_llc({"w": torch.full((1, 2), 3.0)}, _quadratic(h), 1,
                     SGLDConfig(epsilon=1e-2, gamma=0.0, nbeta=10.0, chains=2, draws=300, batch_size=None))
    assert "negative" in neg.flags[0] and not neg.reliable[0]
    assert neg.columns()["llc_reliable"].tolist() == [False]


def test_a_large_step_lowers_the_mala_acceptance():
    h = np.linspace(1, 3, 4)

    def acc(eps):
        r = sample_llc({"w": torch.zeros(1, 4)}, _quadratic(h), 1,
                       SGLDConfig(epsilon=eps, gamma=1.0, nbeta=100.0, chains=2, draws=400, batch_size=None))
        return r.acceptance.mean()

    small, large = acc(1e-4), acc(1.2e-2)
    assert small > 0.95 and large < small - 0.2


@pytest.mark.parametrize("field,value", [("epsilon", 0.0), ("epsilon", -1e-3), ("gamma", -1.0), ("nbeta", 0.0),
                                         ("draws", 0), ("chains", 0), ("burnin", -1), ("batch_size", 0),
                                         ("epsilon", float("nan")), ("init_loss", "mean")])
def test_bad_sampler_values_name_the_field(field, value):
    with pytest.raises(AnalysisError, match=rf"llc\.{field}"):
        SGLDConfig(**{field: value})


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    import grokinterp as gi

    cfg = gi.make_config("tiny", p=11, family="mlp", d_embed=4, d_hidden=16, epochs=30, every=10, log_early=0)
    return gi.train(cfg, tmp_path_factory.mktemp("llc") / "mlp", progress=False)


def test_llc_over_checkpoints_of_a_run_is_a_table_and_chunking_changes_nothing(mlp_run):
    cfg = SGLDConfig(epsilon=1e-3, gamma=10.0, nbeta=5.0, chains=2, draws=40, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCWarning)
        whole = llc_over_checkpoints(mlp_run, cfg)
        alone = llc_over_checkpoints(mlp_run, cfg, chunk=1)
    assert whole["epoch"].tolist() == mlp_run.epochs.tolist()
    for col in ("llc_mean", "llc_std", "llc_chain_0", "llc_chain_1", "llc_reliable", "llc_flags", "llc_rhat",
                "llc_accept", "llc_init_loss"):
        assert col in whole.columns
    np.testing.assert_allclose(whole["llc_chain_0"], alone["llc_chain_0"], rtol=1e-3, atol=1e-3)
    assert whole.attrs["llc"]["nbeta_used"] == 5.0
    # L_n(w*) is the run's own training loss at the checkpoint (the plain computation)
    model = mlp_run.model(int(mlp_run.epochs[-1]))
    x, y = mlp_run.train_data()
    with torch.no_grad():
        plain = torch.nn.functional.cross_entropy(model(x)[:, -1], y).item()
    assert whole["llc_init_loss"].iloc[-1] == pytest.approx(plain, rel=1e-5)


def test_the_measure_adds_llc_columns_to_the_progress_table(mlp_run):
    from grokinterp.analysis.measures import progress_measures
    from grokinterp.analysis.measures.llc import LLCMeasure

    cfg = SGLDConfig(epsilon=1e-3, gamma=10.0, nbeta=5.0, chains=2, draws=30, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCWarning)
        df = progress_measures(mlp_run, measures=["losses", LLCMeasure(cfg)])
        direct = llc_over_checkpoints(mlp_run, cfg)
    assert {"llc_mean", "llc_std", "llc_chain_0", "llc_chain_1", "llc_reliable"} <= set(df.columns)
    np.testing.assert_allclose(df["llc_mean"], direct["llc_mean"], rtol=1e-3, atol=1e-3)


def test_the_measure_samples_the_loss_it_is_given(tmp_path):
    """An MSE-trained run: the measure with ``loss="mse"`` is the estimate ``llc_over_checkpoints`` makes
    from the run's own loss, and differs from the cross-entropy default; an unknown loss names the field."""
    import grokinterp as gi
    from grokinterp.analysis.measures import progress_measures
    from grokinterp.analysis.measures.llc import LLCMeasure

    run = gi.train(gi.make_config("tiny", p=11, family="mlp", d_embed=4, d_hidden=16, epochs=20, every=10,
                                  log_early=0, loss="mse"), tmp_path / "mse", progress=False)
    cfg = SGLDConfig(epsilon=1e-3, gamma=10.0, nbeta=5.0, chains=2, draws=30, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCWarning)
        mse = progress_measures(run, measures=["losses", LLCMeasure(cfg, loss="mse")])
        own = progress_measures(run, measures=["losses", LLCMeasure(cfg)])  # default: the run's own loss
        ce = progress_measures(run, measures=["losses", LLCMeasure(cfg, loss="cross_entropy")])
        direct = llc_over_checkpoints(run, cfg)
    np.testing.assert_allclose(mse["llc_mean"], direct["llc_mean"], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(own["llc_mean"], mse["llc_mean"])
    assert not np.allclose(ce["llc_mean"], direct["llc_mean"], rtol=1e-2)
    with pytest.raises(AnalysisError, match="loss"):
        LLCMeasure(cfg, loss="hinge")


def test_calibration_grid_has_one_row_per_cell_and_traces(mlp_run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCWarning)
        grid, traces = calibrate(mlp_run, [1e-4, 1e-3], [2.0, 5.0], SGLDConfig(chains=2, draws=20, batch_size=16))
    assert len(grid) == 4 and set(grid["epsilon"]) == {1e-4, 1e-3}
    assert len(traces) == 4 * 2 * 20 and {"epsilon", "nbeta", "chain", "draw", "loss"} <= set(traces.columns)


def test_cli_llc_writes_the_table_and_refuses_bad_values(mlp_run, tmp_path):
    from grokinterp.cli import main

    out = tmp_path / "llc.csv"
    assert main(["llc", str(mlp_run.path), "--draws", "20", "--chains", "2", "--epsilon", "1e-3", "--nbeta", "5",
                 "--batch-size", "16", "--out", str(out)]) == 0
    import pandas as pd

    df = pd.read_csv(out)
    assert len(df) == len(mlp_run.epochs) and "llc_mean" in df.columns
    assert main(["llc", str(mlp_run.path), "--epsilon", "0"]) == 2
    assert main(["llc", str(mlp_run.path), "--gamma", "-1"]) == 2
    assert main(["llc", str(mlp_run.path), "--draws", "0"]) == 2
    assert main(["llc", str(mlp_run.path), "--chains", "0"]) == 2
    assert main(["llc", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "nowhere").exists()


def test_cli_llc_refuses_a_run_without_checkpoints(mlp_run, tmp_path, capsys):
    import shutil

    from grokinterp.cli import main

    empty = tmp_path / "empty"
    shutil.copytree(mlp_run.path, empty)
    for f in (empty / "shards").iterdir():
        f.unlink()
    code = main(["llc", str(empty), "--draws", "5"])
    assert code == 2
    assert "checkpoint" in capsys.readouterr().err


def test_our_estimate_agrees_with_devinterps(mlp_run):
    """devinterp 1.3.2 (the ``[slt]`` extra) on the same model, data and sampler values: the means over
    chains agree within their combined spread (different random streams, so not bit for bit)."""
    pytest.importorskip("devinterp")
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    epoch = int(mlp_run.epochs[-1])
    x, y = mlp_run.train_data()
    model = mlp_run.model(epoch)

    def evaluate(m, data):
        xb, yb = data
        return torch.nn.functional.cross_entropy(m(xb)[:, -1], yb), {}

    kw = dict(epsilon=1e-3, gamma=10.0, nbeta=5.0, chains=6, draws=200, batch_size=16, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = estimate_learning_coeff_with_summary(
            model, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True), evaluate=evaluate,
            sampling_method=SGLD, optimizer_kwargs=dict(lr=1e-3, localization=10.0, nbeta=5.0),
            num_chains=6, num_draws=200, seed=3, verbose=False)
        ours = llc_over_checkpoints(mlp_run, SGLDConfig(**kw, init_loss="batches"), epochs=[epoch])
    t = np.array([theirs[f"llc-chain/{i}"] for i in range(6)])
    o = ours[[f"llc_chain_{i}" for i in range(6)]].to_numpy()[0]
    se = math.sqrt(t.var(ddof=1) / 6 + o.var(ddof=1) / 6)
    assert abs(o.mean() - t.mean()) < 3 * se + 0.05 * abs(t.mean())


def test_the_report_draws_the_cached_table_and_verify_ignores_it(mlp_run, tmp_path):
    from grokinterp.cli import main
    from grokinterp.viz.report import write_report

    report = tmp_path / "before.html"
    write_report(mlp_run, report)
    assert "Local learning coefficient" not in report.read_text()  # nothing cached: no figure, no sampling
    assert main(["llc", str(mlp_run.path), "--draws", "10", "--chains", "2", "--epsilon", "1e-3", "--nbeta", "5",
                 "--batch-size", "16"]) == 0
    assert (mlp_run.path / "llc.csv").is_file()
    report = tmp_path / "after.html"
    write_report(mlp_run, report)
    assert "Local learning coefficient" in report.read_text()
    assert main(["verify", str(mlp_run.path)]) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_the_sampler_runs_on_the_gpu_and_recovers_d_over_2():
    h = np.linspace(0.5, 2.0, 6)
    cfg = SGLDConfig(epsilon=1e-3, gamma=1.0, nbeta=100.0, chains=8, draws=2000, burnin=200, batch_size=None)
    h_gpu = torch.as_tensor(h, dtype=torch.float32, device="cuda")
    r = sample_llc({"w": torch.zeros(1, 6, device="cuda")}, lambda P, idx: 0.5 * (P["w"].pow(2) * h_gpu).sum(1), 1,
                   cfg, device="cuda")
    assert r.mean[0] == pytest.approx(_exact(h, 100.0, 1.0, 1e-3), rel=0.05)


def test_llc_help_answers_without_importing_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom grokinterp.cli import main\ntry:\n    main(['llc', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "--draws" in out.stdout and "%%" not in out.stdout
    assert out.stdout.strip().endswith("NO_TORCH"), out.stdout[-200:]


def test_the_acceptance_stays_exact_in_many_dimensions():
    """2·10⁵ parameters, a tiny step: the true MALA acceptance is ≈ 1 (log α is a difference of sums over every
    parameter; it must not drown in their rounding)."""
    d = 200_000
    r = sample_llc({"w": torch.zeros(1, d)}, _quadratic(np.ones(d)), 1,
                   SGLDConfig(epsilon=1e-4, gamma=1.0, nbeta=10.0, chains=2, draws=40, batch_size=None,
                              accept_every=1))
    assert r.acceptance.min() > 0.97


def test_llc_on_a_digits_run_goes_through_the_mlp_forward(tmp_path):
    """A dataset task (input vectors, MSE): the estimate runs through the mlp family's functional forward, and its
    L_n(w*) is the run's training loss at the checkpoint as the vector analyses compute it (another path)."""
    import grokinterp as g
    from grokinterp.analysis.vectors import checkpoint_metrics

    cfg = g.make_config("omnigrok-digits", d_hidden=16, epochs=4, every=2, eval_every=1, log_early=0, flush_every=4,
                        train_size=300)
    run = g.train(cfg, tmp_path / "digits", progress=False)
    sgld = SGLDConfig(epsilon=1e-5, gamma=10.0, nbeta=5.0, chains=2, draws=8, batch_size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCWarning)
        df = llc_over_checkpoints(run, sgld)
    assert df["epoch"].tolist() == run.epochs.tolist()
    assert np.isfinite(df["llc_mean"]).all() and np.isfinite(df["llc_init_loss"]).all()
    ref = checkpoint_metrics(run)
    np.testing.assert_allclose(df["llc_init_loss"], ref["train_loss"], rtol=1e-4)


@pytest.mark.parametrize("name", ["cross_entropy", "stablemax", "mse"])
def test_llc_losses_equal_the_training_losses(name):
    from grokinterp.analysis.llc import LLC_LOSSES
    from grokinterp.training.step import per_example_loss

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(50, 7, generator=gen) * 4
    labels = torch.randint(0, 7, (50,), generator=gen)
    ours = LLC_LOSSES[name](logits, labels)
    ref = per_example_loss(name)(logits, labels)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["mse", "stablemax"])
def test_the_measure_samples_a_transformer_runs_own_loss(tmp_path, loss):
    """A transformer trained with MSE (or StableMax): the measure, given no loss, samples the run's own — its
    L_n(w*) at each checkpoint is the training loss the trainer recorded at that epoch (full batch), and its
    estimate is the one ``llc_over_checkpoints`` makes; under cross-entropy L_n(w*) would be another number."""
    import grokinterp as gi
    from grokinterp.analysis.measures import progress_measures
    from grokinterp.analysis.measures.llc import LLCMeasure

    run = gi.train(gi.make_config("tiny", p=7, epochs=20, every=10, log_early=0, loss=loss), tmp_path / loss,
                   progress=False)
    assert run.config.train.loss == loss
    cfg = SGLDConfig(epsilon=1e-4, gamma=10.0, nbeta=5.0, chains=2, draws=10, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCWarning)
        df = progress_measures(run, measures=["losses", LLCMeasure(cfg)])
        ce = progress_measures(run, measures=["losses", LLCMeasure(cfg, loss="cross_entropy")])
        direct = llc_over_checkpoints(run, cfg)
    recorded = run.metrics.set_index("epoch")["train_loss"]
    for e, init in zip(df["epoch"], df["llc_init_loss"]):
        assert init == pytest.approx(recorded.loc[int(e)], rel=1e-5), e
    np.testing.assert_allclose(df["llc_mean"], direct["llc_mean"], rtol=1e-3, atol=1e-3)
    assert not np.allclose(ce["llc_init_loss"], df["llc_init_loss"], rtol=1e-2)


def test_the_measure_samples_the_model_as_trained_with_an_eq_logit(tmp_path):
    """A run with an output logit for '=' (eq_logit): the measure samples the model as trained (every parameter, the
    '=' column kept), not the residue logits the other measures see — its L_n(w*) is the trainer's recorded training
    loss and its estimate is llc_over_checkpoints'."""
    import grokinterp as gi
    from grokinterp.analysis.measures import progress_measures
    from grokinterp.analysis.measures.llc import LLCMeasure

    run = gi.train(gi.make_config("tiny", p=7, epochs=20, every=10, log_early=0, eq_logit=True), tmp_path / "eq",
                   progress=False)
    cfg = SGLDConfig(epsilon=1e-4, gamma=10.0, nbeta=5.0, chains=2, draws=10, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCWarning)
        df = progress_measures(run, measures=["losses", LLCMeasure(cfg)])
        direct = llc_over_checkpoints(run, cfg)
    recorded = run.metrics.set_index("epoch")["train_loss"]
    for e, init in zip(df["epoch"], df["llc_init_loss"]):
        assert init == pytest.approx(recorded.loc[int(e)], rel=1e-5), e
    np.testing.assert_allclose(df["llc_mean"], direct["llc_mean"], rtol=1e-3, atol=1e-3)


def _plain_sgld_trace(w0: np.ndarray, h: np.ndarray, cfg: SGLDConfig) -> np.ndarray:
    """The SGLD chain written out plainly, one chain and one step at a time in float64, on the quadratic
    L = ½ Σ h w² (full batch), with the sampler's noise stream: ``[K, C, draws]`` recorded losses."""
    g = torch.Generator().manual_seed(cfg.seed)
    K, P = w0.shape
    C = cfg.chains
    w = np.repeat(w0[:, None], C, 1).astype(np.float64)  # [K, C, P]
    out = np.empty((K, C, cfg.draws))
    for t in range(cfg.burnin + cfg.draws):
        loss = 0.5 * (h * w * w).sum(-1)
        if t >= cfg.burnin:
            out[:, :, t - cfg.burnin] = loss
        xi = torch.randn(C, P, generator=g).double().numpy()
        for k in range(K):
            for c in range(C):
                grad_u = cfg.nbeta * h * w[k, c] + cfg.gamma * (w[k, c] - w0[k])
                w[k, c] = w[k, c] - cfg.epsilon / 2 * grad_u + math.sqrt(cfg.epsilon) * xi[c]
    return out


@pytest.mark.parametrize("accept_every", [1, 3])
def test_the_stacked_in_place_step_equals_the_plain_sgld_step(accept_every):
    """The sampler's update (a lerp towards w*, the gradient per parameter, the noise per chain; a separate
    copy on the acceptance steps) is the textbook SGLD step: traces equal a float64 loop to float32 rounding."""
    h = np.array([1.0, 2.0, 0.5, 3.0])
    pts = np.array([[0.0, 0.0, 0.0, 0.0], [0.2, -0.1, 0.3, 0.05]], dtype=np.float32)
    cfg = SGLDConfig(epsilon=2e-3, gamma=5.0, nbeta=20.0, chains=3, draws=150, burnin=5, batch_size=None,
                     accept_every=accept_every)
    ours = sample_llc({"w": torch.from_numpy(pts)}, _quadratic(h), 1, cfg)
    plain = _plain_sgld_trace(pts.astype(np.float64), h, cfg)
    np.testing.assert_allclose(ours.trace, plain, rtol=1e-4, atol=1e-6)


def test_acceptance_on_a_subset_of_draws_agrees_with_every_draw():
    """``accept_every`` only thins the acceptance estimate: the chains (hence λ̂) are bit-identical, and the
    acceptance read on every 10th transition agrees with the one read on every transition."""
    h = np.linspace(0.5, 4.0, 50)
    base = dict(epsilon=8e-3, gamma=1.0, nbeta=30.0, chains=4, draws=1000, batch_size=None)
    every = sample_llc({"w": torch.zeros(1, 50)}, _quadratic(h), 1, SGLDConfig(**base, accept_every=1))
    tenth = sample_llc({"w": torch.zeros(1, 50)}, _quadratic(h), 1, SGLDConfig(**base, accept_every=10))
    assert np.array_equal(every.trace, tenth.trace) and np.array_equal(every.llc, tenth.llc)
    assert 0.2 < every.acceptance.mean() < 0.95  # a step large enough that acceptance varies
    np.testing.assert_allclose(tenth.acceptance.mean(), every.acceptance.mean(), atol=0.03)


@pytest.mark.parametrize("preset,over", [("tiny", {}), ("tiny", {"attn_coeff": 0.5}), ("tiny", {"eq_logit": True})])
def test_the_fast_forward_equals_the_family_forward_in_value_and_gradient(preset, over):
    """model_loss_fn's fast forward (the one-layer kernels' dense final-position forward) = the family's
    functional forward: per-run losses and every parameter's gradient, on different batches per run."""
    import dataclasses

    import grokinterp as gi
    from grokinterp.analysis.llc import fast_forward_applies, model_loss_fn
    from grokinterp.model.families import family_of
    from grokinterp.tasks import get_task

    rc = gi.make_config(preset, **over)
    cfg = rc.model
    fam = family_of(cfg)
    per = [fam.init_params(dataclasses.replace(cfg, init_seed=s)) for s in range(3)]
    P = {k: torch.stack([p[k] for p in per]) for k in per[0]}
    tokens, labels = (torch.from_numpy(x) for x in get_task(rc.task.operation, rc.task.p).dataset().select(
        np.arange(60)))
    assert fast_forward_applies(cfg, tokens) is None
    idx = torch.stack([torch.randperm(60, generator=torch.Generator().manual_seed(s))[:16] for s in range(3)])
    out = {}
    for fast in (False, True):
        fn = model_loss_fn(fam.forward, cfg, tokens, labels, fast=fast)
        assert fn.fast is fast
        leaves = {k: v.clone().requires_grad_(True) for k, v in P.items()}
        loss = fn(leaves, idx)
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        out[fast] = (loss, dict(zip(leaves, grads)))
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
    for k in P:
        torch.testing.assert_close(out[True][1][k], out[False][1][k], rtol=1e-4, atol=1e-5, msg=k)


def test_the_fast_forward_refuses_a_model_it_cannot_compute():
    import grokinterp as gi
    from grokinterp.analysis.llc import fast_forward_applies, model_loss_fn
    from grokinterp.model.families import family_of

    cfg = gi.make_config("tiny", p=7, n_layers=2).model
    tokens = torch.tensor([[1, 2, 7], [3, 4, 7]])
    assert "n_layers" in fast_forward_applies(cfg, tokens)
    with pytest.raises(AnalysisError, match="fast"):
        model_loss_fn(family_of(cfg).forward, cfg, tokens, torch.tensor([3, 0]), fast=True)
    assert model_loss_fn(family_of(cfg).forward, cfg, tokens, torch.tensor([3, 0])).fast is False


def test_llc_over_runs_equals_each_run_alone_and_refuses_other_shapes(tmp_path):
    """Two seeds (their own splits) in one stack, interleaved and chunked: each estimate equals
    llc_over_checkpoints of its run alone (common random numbers) up to rounding; on_chunk sees every chunk."""
    import grokinterp as gi
    from grokinterp.analysis.llc import llc_over_runs

    cfgs = [gi.make_config("tiny", init_seed=s, split_seed=s, epochs=30, every=10, log_early=0) for s in (0, 1)]
    runs = gi.train_stacked(cfgs, [tmp_path / f"s{s}" for s in (0, 1)], progress=False)
    cfg = SGLDConfig(epsilon=1e-4, gamma=100.0, nbeta=10.0, chains=2, draws=30, batch_size=32)
    order = [(j, int(e)) for e in runs[0].epochs[::-1] for j in (1, 0)]
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCWarning)
        both = llc_over_runs(runs, cfg, order=order, chunk=3, on_chunk=seen.append)
        alone = [llc_over_checkpoints(r, cfg) for r in runs]
    assert [(int(j), int(e)) for j, e in zip(both["run"], both["epoch"])] == order
    assert sum(len(d) for d in seen) == len(order) and len(seen) == -(-len(order) // 3)
    for j in (0, 1):
        got = both[both["run"] == j].sort_values("epoch")
        np.testing.assert_allclose(got["llc_init_loss"], alone[j]["llc_init_loss"], rtol=1e-6)
        np.testing.assert_allclose(got["llc_chain_0"], alone[j]["llc_chain_0"], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(got["llc_chain_1"], alone[j]["llc_chain_1"], rtol=1e-3, atol=1e-3)
    assert not np.allclose(both[both["run"] == 0]["llc_init_loss"].to_numpy(),
                           both[both["run"] == 1]["llc_init_loss"].to_numpy())  # each run its own loss
    other = gi.train(gi.make_config("tiny", p=11, epochs=2, every=1, log_early=0), tmp_path / "other", progress=False)
    with pytest.raises(AnalysisError, match=r"runs\[1\]"):
        llc_over_runs([runs[0], other], cfg)


def test_llc_over_runs_names_a_bad_epochs_or_order_argument(tmp_path):
    """``epochs`` must be one list per run and ``order``'s run indices must be runs: an AnalysisError naming the
    argument, not an IndexError / TypeError from inside (or a silently ignored extra list)."""
    import grokinterp as gi
    from grokinterp.analysis.llc import llc_over_runs

    run = gi.train(gi.make_config("tiny", epochs=2, every=1, log_early=0), tmp_path / "r", progress=False)
    cfg = SGLDConfig(chains=1, draws=2, burnin=0, batch_size=16)
    for kw, field in [(dict(order=[(1, 1)]), "order"), (dict(order=[(-1, 1)]), "order"),
                      (dict(epochs=[1]), "epochs"), (dict(epochs=[[1], [2]]), "epochs")]:
        with pytest.raises(AnalysisError, match=rf"^{field}:"):
            llc_over_runs([run], cfg, **kw)


def test_llc_warnings_name_the_run_of_each_unreliable_estimate():
    """``llc_over_runs`` mixes runs whose epochs coincide: its warning names ``run j @ epoch``, not the epoch alone."""
    from types import SimpleNamespace

    from grokinterp.analysis.llc import _warn

    result = SimpleNamespace(flags=[[], ["rhat"], ["acceptance", "rhat"]])
    with pytest.warns(LLCWarning, match=r"2 of 3 estimate\(s\) unreliable: run 1 @ 100 \(rhat\), run 0 @ 100 "
                                        r"\(acceptance;rhat\)"):
        _warn(result, [100, 100, 100], [0, 1, 0])
    with pytest.warns(LLCWarning, match=r"unreliable: 200 \(rhat\), 300 "):
        _warn(result, [100, 200, 300])
