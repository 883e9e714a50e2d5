"""Progress measures: FFT shortcuts against brute force, losses against known truths, the
vectorised table against the per-checkpoint reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from oracles import progress_measures_reference

from grokinterp.analysis.keyfreqs import KeyFrequencies, key_frequencies
from grokinterp.analysis.losses import excluded_loss, restricted_loss, task_label_grid
from grokinterp.analysis.losses import nll_and_correct as _nll
from grokinterp.analysis.measures import MEASURE_COLUMNS, progress_measures
from grokinterp.analysis.projections import sum_frequency_projection
from grokinterp.errors import AnalysisError


def _sum_vectors(p: int, freqs, include_mean: bool) -> torch.Tensor:
    """Columns ``[p², m]``: 1 and cos/sin(2πw(a+b)/p) on the grid, not normalised."""
    a = torch.arange(p, dtype=torch.float64)
    s = (a[:, None] + a[None, :]).reshape(-1)
    cols = [torch.ones(p * p, dtype=torch.float64)] if include_mean else []
    for w in freqs:
        cols.append(torch.cos(2 * math.pi * w * s / p))
        if 2 * w != p:  # the Nyquist sine is identically 0
            cols.append(torch.sin(2 * math.pi * w * s / p))
    return torch.stack(cols, dim=1)


def _brute_projection(L: torch.Tensor, freqs, include_mean: bool) -> torch.Tensor:
    """Least-squares projection of every ``L[n, ·, ·, c]`` onto the span of :func:`_sum_vectors`."""
    n, p = L.shape[0], L.shape[1]
    V = _sum_vectors(p, freqs, include_mean)
    Y = L.reshape(n, p * p, -1).double()
    coef = torch.linalg.lstsq(V.expand(n, -1, -1), Y).solution
    return (V @ coef).reshape(L.shape)


def _plain_ce(L: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    p = L.shape[-3]
    flat = L.reshape(*L.shape[:-3], p * p, -1).double()
    logp = torch.log_softmax(flat[..., idx, :], dim=-1)
    return -logp[..., torch.arange(len(idx)), labels[idx]].mean(-1)


# -- the FFT projection -------------------------------------------------------------------------------
@pytest.mark.parametrize("p,freqs", [(7, [1, 3]), (8, [1, 4]), (12, [2, 5, 6]), (13, [1, 2, 6])])
@pytest.mark.parametrize("include_mean", [True, False])
def test_fft_projection_equals_brute_force(p, freqs, include_mean):
    L = torch.randn(2, p, p, p, generator=torch.Generator().manual_seed(p), dtype=torch.float64)
    got = sum_frequency_projection(L, freqs, include_mean=include_mean)
    want = _brute_projection(L, freqs, include_mean)
    assert got.shape == L.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("p", [9, 10])
def test_projection_equals_2d_dft_formula(p):
    """(2/p²)·Re(F[w, w] e^{2πiw(a+b)/p}) (1/p² for the Nyquist frequency) plus F[0, 0]/p²."""
    L = torch.randn(p, p, p, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    freqs = [1, p // 2]
    F = torch.fft.fft2(L, dim=(0, 1))
    a = torch.arange(p, dtype=torch.float64)
    s = a[:, None] + a[None, :]
    want = F[0, 0].real[None, None, :].expand(p, p, p) / p ** 2
    for w in freqs:
        m = 1 if 2 * w == p else 2
        phase = torch.exp(2j * math.pi * w * s / p)[:, :, None]
        want = want + m / p ** 2 * (F[w, w][None, None, :] * phase).real
    torch.testing.assert_close(sum_frequency_projection(L, freqs), want, rtol=1e-9, atol=1e-9)


def test_projection_is_idempotent_and_keeps_its_span():
    p = 11
    L = torch.randn(3, p, p, p, dtype=torch.float64)
    P = sum_frequency_projection(L, [2, 5])
    torch.testing.assert_close(sum_frequency_projection(P, [2, 5]), P)
    # the residual carries nothing along the kept directions
    V = _sum_vectors(p, [2, 5], include_mean=True)
    resid = (L - P).reshape(3, p * p, p)
    assert torch.allclose(V.T @ resid, torch.zeros(1, dtype=torch.float64), atol=1e-9)


# -- losses -------------------------------------------------------------------------------------------
def _key_logits(p: int, freqs, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are exactly per-output constants plus Σ α_w cos(w(a+b−c)) + β_w sin(w(a+b−c))."""
    g = torch.Generator().manual_seed(seed)
    a = torch.arange(p, dtype=torch.float64)
    ang = 2 * math.pi * (a[:, None, None] + a[None, :, None] - a[None, None, :]) / p
    const = torch.randn(p, generator=g, dtype=torch.float64)
    L = const[None, None, :].expand(p, p, p).clone()
    for w in freqs:
        alpha, beta = 3 * torch.rand(2, generator=g, dtype=torch.float64)
        L += alpha * torch.cos(w * ang) + beta * torch.sin(w * ang)
    return L, const


@pytest.mark.parametrize("p", [11, 12])
def test_restricted_loss_of_key_frequency_logits_is_their_plain_loss(p):
    freqs = [1, 3, p // 2]
    L, const = _key_logits(p, freqs)
    labels = task_label_grid(p)
    everything = torch.arange(p * p)
    plain = _plain_ce(L, everything, labels)
    torch.testing.assert_close(restricted_loss(L, freqs), plain, rtol=1e-9, atol=0)
    # with all key frequencies removed only the per-output constants are left
    train = torch.arange(0, p * p, 3)
    only_const = _plain_ce(const[None, None, :].expand(p, p, p), train, labels)
    torch.testing.assert_close(excluded_loss(L, freqs, train), only_const, rtol=1e-7, atol=1e-9)


def test_excluded_loss_without_key_frequencies_is_the_train_loss():
    p = 13
    L = 5 * torch.randn(2, p, p, p)
    train = torch.randperm(p * p, generator=torch.Generator().manual_seed(0))[:50]
    labels = task_label_grid(p)
    torch.testing.assert_close(excluded_loss(L, [], train), _plain_ce(L, train, labels), rtol=1e-6, atol=0)


def test_restricted_loss_without_key_frequencies_uses_the_per_output_mean():
    p = 7
    L = torch.randn(p, p, p, dtype=torch.float64)
    mean = L.mean(dim=(0, 1), keepdim=True).expand(p, p, p)
    want = _plain_ce(mean, torch.arange(p * p), task_label_grid(p))
    torch.testing.assert_close(restricted_loss(L, []), want, rtol=1e-12, atol=0)


def test_losses_for_an_operation_with_invalid_pairs():
    """Division mod p: pairs with b = 0 are not part of the task and are left out."""
    p = 7
    labels = task_label_grid(p, "div")
    assert (labels.reshape(p, p)[:, 0] == -1).all() and (labels.reshape(p, p)[:, 1:] >= 0).all()
    L = torch.randn(p, p, p, dtype=torch.float64)
    valid = torch.nonzero(labels >= 0)[:, 0]
    want = _plain_ce(_brute_projection(L[None], [2], True)[0], valid, labels)
    torch.testing.assert_close(restricted_loss(L, [2], labels=labels), want, rtol=1e-9, atol=0)
    with pytest.raises(AnalysisError, match=r"not pairs of the task"):
        excluded_loss(L, [2], [0, 1, 7], labels=labels)  # 0 = (0, 0), 7 = (1, 0): b = 0


def test_nll_is_accurate_for_tiny_losses():
    """The float32 fast path agrees with a float64 log-softmax down to 1e-16 losses."""
    g = torch.Generator().manual_seed(0)
    m, c = 400, 31
    L = 3 * torch.randn(2, m, c, generator=g)
    y = torch.randint(0, c, (m,), generator=g)
    L[:, torch.arange(m), y] += torch.linspace(-5, 35, m)  # from wrong answers to 1e-15 losses
    want = -torch.log_softmax(L.double(), -1)[:, torch.arange(m), y]
    got, correct = _nll(L, y)
    assert got.dtype == torch.float64
    assert want.min() < 1e-13 and want.max() > 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-15)
    assert torch.equal(correct, L.argmax(-1) == y)


# -- the table over a run -----------------------------------------------------------------------------
def _compare(df: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert list(df.columns) == list(MEASURE_COLUMNS) == list(ref.columns)
    np.testing.assert_array_equal(df["epoch"].to_numpy(), ref["epoch"].to_numpy())
    for c in MEASURE_COLUMNS[1:]:
        np.testing.assert_allclose(df[c].to_numpy(), ref[c].to_numpy(), rtol=1e-4, atol=1e-12, err_msg=c)


def test_vectorised_measures_equal_the_reference(tiny_run):
    df = progress_measures(tiny_run, chunk=3)  # chunks that straddle shards
    ref = progress_measures_reference(tiny_run)
    _compare(df, ref)
    assert len(df) == len(tiny_run.epochs) and df["epoch"].dtype == np.int64
    # the key set is chosen at the first checkpoint at or after test accuracy reached 99 % (not the last,
    # which moved dates when a run trained longer: tests/test_dates_stable.py)
    t99 = tiny_run.summary()["test_acc_99_epoch"]
    chosen = int(min(e for e in tiny_run.epochs if e >= t99))
    kf = key_frequencies(tiny_run.params(chosen))
    assert df.attrs["key_freqs"] == list(kf.freqs) == ref.attrs["key_freqs"]
    assert df.attrs["key_freq_method"] == "W_L" and df.attrs["key_freq_epoch"] == chosen
    assert "≥" in df.attrs["key_freq_rule"] and set(df.attrs["splits"]) >= {"restricted_loss", "excluded_loss"}


def _logged_vs_measured(run, cols):
    df = progress_measures(run, [1, 2])
    ev = run.evals.set_index("epoch")
    rows = df[df["epoch"].isin(ev.index)]
    assert len(rows) >= 3
    for c in cols:
        np.testing.assert_allclose(rows[c].to_numpy(), ev.loc[rows["epoch"], c].to_numpy(), rtol=1e-4, err_msg=c)


def test_measures_agree_with_the_logged_metrics(tiny_run):
    """Losses and accuracies at a checkpoint equal what the trainer logged at that epoch."""
    _logged_vs_measured(tiny_run, ("train_loss", "train_acc", "test_loss", "test_acc"))


def test_key_frequency_choices(tiny_run):
    eps = tiny_run.epochs[-2:]
    df = progress_measures(tiny_run, [3, 1, 3], epochs=eps)
    assert df.attrs["key_freqs"] == [1, 3] and df.attrs["key_freq_method"] == "given"
    kf = KeyFrequencies((2,), "W_E", np.zeros(1), "a rule")
    df2 = progress_measures(tiny_run, kf, epochs=eps)
    assert df2.attrs["key_freqs"] == [2] and df2.attrs["key_freq_rule"] == "a rule"
    _compare(df2, progress_measures_reference(tiny_run, kf, epochs=eps))
    p = tiny_run.config.task.p
    with pytest.raises(AnalysisError, match=rf"frequency {p}\b"):
        progress_measures(tiny_run, [1, p], epochs=eps)


@pytest.fixture(scope="module")
def div_run(tmp_path_factory):
    """A short run of division mod 11 (b = 0 is not a pair): exercises the valid-pair paths."""
    import grokinterp as g

    cfg = g.make_config("tiny", p=11, operation="div", d_model=16, d_mlp=32, epochs=12, every=4,
                        log_early=0, flush_every=2)
    return g.train(cfg, tmp_path_factory.mktemp("runs") / "div", progress=False)


def test_vectorised_equals_reference_for_division(div_run):
    df = progress_measures(div_run, [1, 4])
    _compare(df, progress_measures_reference(div_run, [1, 4]))
    ev = div_run.metrics.set_index("epoch").loc[df["epoch"]]
    for c in ("train_loss", "test_loss"):
        logged = ev[c].notna().to_numpy()
        assert logged.sum() >= 2
        np.testing.assert_allclose(df[c].to_numpy()[logged], ev[c].to_numpy()[logged], rtol=1e-5, err_msg=c)


# -- bad input ----------------------------------------------------------------------------------------
def test_bad_arguments(tiny_run):
    with pytest.raises(AnalysisError, match="chunk"):
        progress_measures(tiny_run, [1], chunk=0)
    with pytest.raises(AnalysisError, match="no checkpoints"):
        progress_measures(tiny_run, [1], epochs=[])
    with pytest.raises(AnalysisError, match="key_freqs"):
        progress_measures(tiny_run, key_freqs=object())
    with pytest.raises(AnalysisError, match=r"logits.*\[5, 5, 4\]"):
        restricted_loss(torch.zeros(5, 5, 4), [1])
    with pytest.raises(AnalysisError, match=r"logits"):
        sum_frequency_projection(torch.zeros(5, 4, 5), [1])
    with pytest.raises(AnalysisError, match=r"train_pairs.*\[0, 25\)"):
        excluded_loss(torch.zeros(5, 5, 5), [1], [3, 25])
    with pytest.raises(AnalysisError, match="frequency 3"):
        sum_frequency_projection(torch.zeros(5, 5, 5), [3])
