"""Dataset tasks (issue 22): digits / MNIST from IDX files through the Task protocol, the MLP over input vectors
(alone and in stacks, with resume, info and verify), the analyses that apply to such runs and the ones that say
"undefined", and the embedding pictures (PCA / t-SNE) of any run."""

from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pytest
import torch

import grokinterp as g
from grokinterp.errors import AnalysisError, ConfigError
from grokinterp.store.integrity import verify
from grokinterp.tasks.datasets import MNIST_FILES, read_idx, write_idx

SMALL = dict(d_hidden=16, epochs=4, every=5, eval_every=1, log_early=0, flush_every=4)


def _digits(**kw):
    return g.make_config("omnigrok-digits", **{**SMALL, "train_size": 300, **kw})


def _mnist_dir(tmp_path, n_train=40, n_test=12, side=6, gz=True, seed=0):
    """A tiny MNIST-shaped IDX set: class k images are bright in row k mod side (learnable)."""
    rng = np.random.default_rng(seed)
    d = tmp_path / "mnist"
    d.mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 40, (n, side, side)).astype(np.uint8)
        x[np.arange(n), y % side] = 255
        suffix = ".gz" if gz else ""
        write_idx(d / (MNIST_FILES[f"{split}_images"] + suffix), x)
        write_idx(d / (MNIST_FILES[f"{split}_labels"] + suffix), y)
    return d


# -- IDX files --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_files_round_trip_raw_and_gzip(tmp_path, name, dtype):
    x = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    if dtype == np.uint8:
        x = np.abs(x).astype(np.uint8)
    write_idx(tmp_path / name, x)
    raw = (tmp_path / name).read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == name.endswith(".gz")
    body = gzip.decompress(raw) if name.endswith(".gz") else raw
    assert body[:4] == bytes([0, 0, {np.uint8: 8, np.int8: 9, np.int16: 11, np.int32: 12, np.float32: 13,
                                     np.float64: 14}[dtype], 3])
    assert int.from_bytes(body[4:8], "big") == 2 and int.from_bytes(body[12:16], "big") == 4  # big-endian sizes
    y = read_idx(tmp_path / name)
    assert y.dtype == np.dtype(dtype) and np.array_equal(y, x)


def test_malformed_or_missing_idx_files_are_errors_naming_the_file(tmp_path):
    bad = tmp_path / "bad-idx"
    for content, match in ((b"", "not an IDX file"), (b"\x00\x01\x08\x01", "not an IDX file"),
                           (b"\x00\x00\x08\x02\x00\x00", "header is truncated"),
                           (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", r"says shape \[5\]"),
                           (b"\x1f\x8b\x08garbage", "damaged gzip")):
        bad.write_bytes(content)
        with pytest.raises(ConfigError, match=f"^task.data: .*bad-idx.*{match}|^task.data: .*{match}.*"):
            read_idx(bad)
        with pytest.raises(ConfigError, match="bad-idx"):
            read_idx(bad)
    with pytest.raises(ConfigError, match="cannot read IDX file .*nope"):
        read_idx(tmp_path / "nope")


def test_mnist_tasks_read_the_users_idx_files_and_name_what_is_missing(tmp_path):
    d = _mnist_dir(tmp_path)
    task = g.get_task("mnist", 10, data=str(d))
    assert task.n_examples == 52 and task.n_pool == 40 and task.n_ctx == 36 and task.d_vocab_out == 10
    x, y = task.dataset().select(np.array([0, 41]))
    assert x.dtype == np.float32 and x.shape == (2, 36) and 0 <= x.min() and x.max() == 1.0  # pixels / 255
    assert np.array_equal(y, read_idx(d / (MNIST_FILES["train_labels"] + ".gz"))[[0]].tolist()
                          + read_idx(d / (MNIST_FILES["test_labels"] + ".gz"))[[1]].tolist())
    trn, tst = task.split(0.5, seed=3, train_size=10)
    assert len(trn) == 10 and trn.max() < 40 and np.array_equal(tst, np.arange(40, 52))  # test = the test file
    assert np.array_equal(trn, task.split(0.5, seed=3, train_size=10)[0])  # seeded
    assert not np.array_equal(trn, task.split(0.5, seed=4, train_size=10)[0])
    fashion = g.get_task("fashion_mnist", 10, data=str(d))  # the same IDX layout
    assert fashion.name == "fashion_mnist" and np.array_equal(fashion.dataset().select([5])[0], task.dataset().select([5])[0])
    (d / (MNIST_FILES["test_labels"] + ".gz")).unlink()
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte"):
        g.get_task("mnist", 10, data=str(d))
    write_idx(d / MNIST_FILES["test_labels"], np.zeros(3, np.uint8))  # raw file, wrong count
    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte: expected 12 labels"):
        g.get_task("mnist", 10, data=str(d))
    with pytest.raises(ConfigError, match="^task.data: mnist reads the IDX files you have"):
        g.make_config("tiny", family="mlp", operation="mnist")


def test_digits_task_split_and_normalisation():
    task = g.get_task("digits", 10)
    assert task.n_examples == 1797 and task.n_ctx == 64 and task.structure is None
    x, y = task.dataset().select(task.valid_pairs())
    assert x.shape == (1797, 64) and 0.0 == x.min() and x.max() == 1.0  # pixels / 16
    from sklearn.datasets import load_digits

    d = load_digits()
    assert np.allclose(x * 16, d.data) and np.array_equal(y, d.target)
    cfg = _digits(train_size=1000)
    trn, tst = g.tasks.split_pairs(cfg.task)
    assert len(trn) == 1000 and len(tst) == 797 and not set(trn) & set(tst)
    assert cfg.n_train() == 1000 and cfg.model.d_input == 64 and cfg.model.p == 10
    with pytest.raises(ConfigError, match=r"^task.train_size: must lie in \[1, 1796\]"):
        _digits(train_size=1797)
    with pytest.raises(ConfigError, match="^task.train_size: is for dataset tasks"):
        g.make_config("tiny", train_size=10)
    with pytest.raises(ConfigError, match="^task.p: digits is a dataset task of 10 classes"):
        g.make_config("omnigrok-digits", p=113)
    with pytest.raises(ConfigError, match="^model.family: digits classifies input vectors"):
        g.make_config("tiny", operation="digits")
    with pytest.raises(ConfigError, match="^train.live_every: the live measures .* undefined for the dataset task"):
        g.make_config("omnigrok-digits", live_every=10)
    # a preset's p is ignored; the task sets the model's input width
    c = g.make_config("tiny", family="mlp", operation="digits")
    assert (c.task.p, c.model.d_input, c.model.n_ctx, c.model.d_embed) == (10, 64, 64, 0)
    back = g.make_config("omnigrok-digits", operation="add", p=31)  # back to a token task: fields reset
    assert (back.task.train_size, back.model.d_input, back.model.n_ctx) == (None, 0, 3)


# -- the MLP over vectors ----------------------------------------------------------------------------------
def test_vector_mlp_forward_equals_a_plain_torch_mlp():
    from grokinterp.model.families import get_family

    cfg = _digits(init_scale=8.0).model
    fam = get_family("mlp")
    params = fam.init_params(cfg)
    assert list(params) == ["hidden.0.W_in", "hidden.0.b_in", "hidden.1.W_in", "hidden.1.b_in", "unembed.W_U",
                            "unembed.b_U"]
    assert sum(p.numel() for p in params.values()) == cfg.n_params == 64 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10
    assert float(params["hidden.0.W_in"].abs().max()) <= 8.0 / 8 + 1e-6  # U(±1/√64) × α
    x = torch.rand(7, 64)
    plain = torch.relu(x @ params["hidden.0.W_in"] + params["hidden.0.b_in"])
    plain = torch.relu(plain @ params["hidden.1.W_in"] + params["hidden.1.b_in"])
    plain = plain @ params["unembed.W_U"] + params["unembed.b_U"]
    hooked = fam.hooked(cfg).eval()
    assert torch.allclose(hooked(x)[:, -1], plain, atol=1e-5)
    stacked = {k: torch.stack([v, 2 * v]) for k, v in params.items()}
    out = fam.forward(stacked, x, cfg)
    assert out.shape == (2, 7, 10) and torch.allclose(out[0], plain, atol=1e-5)
    with pytest.raises(ConfigError, match=r"d_input = 64"):
        hooked(torch.zeros(3, 3, dtype=torch.long))


def test_a_digits_run_trains_resumes_and_verifies(tmp_path):
    from _helpers import StopAt

    cfg = _digits()
    ref = g.train(cfg, tmp_path / "ref", progress=False)
    assert ref.finished and ref.split_pairs()[0].size == 300 and len(ref.split_pairs()[1]) == 1497
    assert verify(tmp_path / "ref").ok
    x, y = ref.train_data()
    assert x.dtype == torch.float32 and x.shape == (300, 64)
    assert ref.metrics["step"].dropna().iloc[-1] == cfg.total_steps() == 4 * 2  # 300 / 200: 2 steps an epoch
    assert float(ref.metrics["train_loss"].iloc[0]) > 10  # MSE of an α = 8 network: large
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        g.train(cfg, out, progress=False, callbacks=[StopAt(1)])
    run = g.resume(out, progress=False)
    assert all(torch.equal(run.stack(k), ref.stack(k)) for k in ref.stacks())
    assert (out / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()


def test_digits_runs_stack_like_runs_trained_alone(tmp_path):
    from grokinterp.training.stacked import stack_key, train_stacked

    cfgs = [_digits(init_seed=s, split_seed=s, sampler_seed=s, weight_decay=w)
            for s, w in ((0, 0.01), (1, 0.3), (2, 1.0))]
    assert len({stack_key(c) for c in cfgs}) == 1
    stack = train_stacked(cfgs, [tmp_path / f"s{i}" for i in range(3)], progress=False)
    for i, cfg in enumerate(cfgs):
        alone = g.train(cfg, tmp_path / f"a{i}", progress=False)
        for k in alone.stacks():
            a, b = alone.stack(k), stack[i].stack(k)
            assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max())), (i, k)
        np.testing.assert_allclose(stack[i].evals["test_acc"], alone.evals["test_acc"], atol=2 / 1497)


def test_cross_entropy_digits_runs_train_and_their_evaluations_agree(tmp_path):
    from grokinterp.analysis.vectors import checkpoint_metrics

    run = g.train(_digits(loss="cross_entropy", init_scale=1.0, epochs=3, lr=1e-2), tmp_path / "ce", progress=False)
    ev = run.evals
    assert ev["train_loss"].iloc[-1] < ev["train_loss"].iloc[0] and ev["train_loss"].iloc[0] == pytest.approx(
        np.log(10), abs=0.3)  # α = 1: near-uniform logits at the start
    m = checkpoint_metrics(run, run.epochs[[0, -1]])
    assert m.attrs["loss"] == "cross_entropy"
    assert m["train_loss"].iloc[-1] == pytest.approx(ev["train_loss"].iloc[-1], rel=1e-4)


def test_cli_refuses_bad_data_with_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    for extra, match in (([], "give --data DIR"), (["--data", str(tmp_path / "none")], "is not one"),
                         (["--data", str(tmp_path)], "train-images-idx3-ubyte")):
        p = subprocess.run([sys.executable, "-m", "grokinterp", "train", "--preset", "tiny", "--family", "mlp",
                            "--operation", "mnist", *extra, "--out", str(out)], capture_output=True, text=True)
        assert p.returncode == 2, p.stderr
        assert match in p.stderr and "task.data" in p.stderr
        assert not out.exists()


@pytest.mark.slow
def test_an_mnist_run_from_idx_files_trains_through_the_cli(tmp_path):
    d = _mnist_dir(tmp_path, gz=False)
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "grokinterp", "train", "--preset", "omnigrok-digits", "--operation",
                        "mnist", "--data", str(d), "--train-size", "20", "--batch-size", "10", "--d-hidden", "8",
                        "--epochs", "3", "--every", "2", "--out", str(out), "--no-progress"], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    run = g.load_run(out)
    assert run.config.task.data == str(d) and run.config.model.d_input == 36 and len(run.split_pairs()[1]) == 12
    info = subprocess.run([sys.executable, "-m", "grokinterp", "info", str(out)], capture_output=True, text=True)
    assert info.returncode == 0 and "train_size 20" in info.stdout and "data " in info.stdout


# -- analyses ----------------------------------------------------------------------------------------------
def test_analyze_run_on_a_digits_run_says_undefined_and_never_a_number(tmp_path):
    from grokinterp.analysis.summary import analyze_run
    from grokinterp.analysis.vectors import checkpoint_metrics

    run = g.train(_digits(epochs=6), tmp_path / "r", progress=False)
    a = analyze_run(run)
    h = a.headline()
    assert h["key_frequencies"] is None and "undefined for this task" in h["key_frequencies_note"]
    assert h["circuit_formed_epoch"] is None and any("undefined for this task" in n for n in h["notes"])
    assert len(h["neuron_layers"]) == 2 and h["weight_norm_first"] > h["weight_norm_last"] > 0
    # the checkpoint evaluation equals the training loop's own evaluation at the epochs both have
    m = checkpoint_metrics(run)
    ev = run.evals.set_index("epoch")
    k = run.config.steps_per_epoch()
    for _, row in m.iterrows():
        e, r = divmod(int(row["epoch"]), k)
        if r == 0 and e in ev.index:
            assert row["test_acc"] == pytest.approx(ev.loc[e, "test_acc"], abs=1e-9)
            assert row["train_loss"] == pytest.approx(ev.loc[e, "train_loss"], rel=1e-4)
    # weight norm = ‖θ‖ of the stored parameters
    p0 = run.params(int(run.epochs[0]))
    assert m["weight_norm"].iloc[0] == pytest.approx(float(torch.sqrt(sum((v.double() ** 2).sum() for v in p0.values()))))
    with pytest.raises(AnalysisError, match="undefined for this task"):
        analyze_run(run, key_freqs=[1])


def test_grokking_dates_on_planted_curves():
    import pandas as pd

    from grokinterp.analysis.vectors import grokking_dates

    ev = pd.DataFrame({"epoch": [0, 10, 20, 30, 40], "train_acc": [0.1, 0.9, 1.0, 1.0, 1.0],
                       "test_acc": [0.1, 0.2, 0.25, 0.5, 0.9]})
    d = grokking_dates(ev, steps_per_epoch=5)
    assert (d.train_100_epoch, d.train_100_step, d.test_at_train_100, d.grokked) == (20, 100, 0.25, True)
    assert d.rise == pytest.approx(0.65) and d.generalized_epoch == 40  # 0.25 + 0.9 · 0.65 = 0.835
    flat = grokking_dates(ev.assign(test_acc=[0.1, 0.8, 0.85, 0.9, 0.95]))
    assert not flat.grokked and flat.generalized_epoch is None and "below the 0.2" in flat.reasons["generalized"]
    never = grokking_dates(ev.assign(train_acc=0.5))
    assert never.train_100_epoch is None and "never reached 100 %" in never.reasons["train_100"]


def test_neuron_statistics_against_planted_neurons():
    from grokinterp.analysis.vectors import neuron_statistics

    y = torch.arange(40) % 4
    acts = torch.stack([y.double() * 2, torch.zeros(40), torch.rand(40, generator=torch.Generator().manual_seed(0))], 1)
    s = neuron_statistics(acts, y)
    assert s["class_fve"][0] == pytest.approx(1.0) and np.isnan(s["class_fve"][1]) and s["class_fve"][2] < 0.5
    assert s["dead"].tolist() == [False, True, False] and s["top_class"][0] == 3
    assert s["frac_active"][0] == pytest.approx(0.75)


# -- embedding pictures ------------------------------------------------------------------------------------
def test_embedding_maps_are_deterministic_and_coloured_by_the_task(tmp_path):
    from grokinterp.analysis.embeddings import embedding_map, project_2d

    run = g.train(_digits(), tmp_path / "d", progress=False)
    a = embedding_map(run, what="hidden", method="tsne", seed=3, max_points=120)
    b = embedding_map(run, what="hidden", method="tsne", seed=3, max_points=120)
    assert a.points.equals(b.points) and len(a.points) == 120
    labels = run.task.label_grid()[a.points["index"].to_numpy()]
    assert np.array_equal(a.points["label"], labels)  # the digit
    pca = embedding_map(run, what="hidden", method="pca", max_points=5000)
    assert len(pca.points) == 1797 and sum(pca.explained) <= 1
    with pytest.raises(AnalysisError, match="no token embedding"):
        embedding_map(run, what="embed")
    # PCA recovers a planted plane: points on a 2-D plane in 10-D, their coordinates up to a rotation (distances kept)
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(50, 2)) * [3.0, 1.0]
    basis = np.linalg.qr(rng.normal(size=(10, 2)))[0]
    y, ev = project_2d(coords @ basis.T + 5.0, "pca")
    assert ev[0] + ev[1] == pytest.approx(1.0)
    dist = lambda z: np.linalg.norm(z[:, None] - z[None], axis=-1)  # noqa: E731
    assert np.allclose(dist(y), dist(coords), atol=1e-9)


def test_embedding_labels_residues_for_addition_and_classes_for_s5(tmp_path):
    from grokinterp.analysis.embeddings import embedding_map

    add = g.train(g.make_config("tiny", p=11, d_model=16, n_heads=2, d_mlp=32, epochs=2, every=1), tmp_path / "a",
                  progress=False)
    m = embedding_map(add, what="embed", method="pca")
    assert m.points["label"].tolist() == list(range(11))
    h = embedding_map(add, what="hidden", method="pca", max_points=50, seed=1)
    idx = h.points["index"].to_numpy()
    assert np.array_equal(h.points["label"], (idx // 11 + idx % 11) % 11)  # the residue a + b
    s5 = g.get_task("S5", 120)
    ids, names = s5.color_labels(np.arange(120))
    assert sorted(np.bincount(ids).tolist()) == [1, 10, 15, 20, 20, 24, 30]  # S5's conjugacy classes
    assert ids[0] == 0 and names[0].startswith("class 0") and len(names) == 7


def test_the_report_of_a_digits_run_adapts(tmp_path, monkeypatch):
    import grokinterp.viz.report as R

    monkeypatch.setattr(R, "REPORT_MAP_POINTS", 80)
    run = g.train(_digits(epochs=3), tmp_path / "r", progress=False)
    path, h = R.write_report(run, return_headline=True)
    text = path.read_text()
    assert h["key_frequencies"] is None and h["verdict"] in text
    assert "undefined for this task" in text and "Hidden layer, embedded" in text and "Weight norm" in text
    assert "Progress measures" not in text and "key frequencies</th><td>undefined" in text.replace("\n", "")


def test_the_report_of_a_digits_run_end_to_end_probes_llc_and_undefined(tmp_path, monkeypatch):
    """The whole report of a dataset run: the sections that apply are there (curves, weight norm, hidden-layer map,
    the probes computed over the run's vectors, the LLC once ``RUN/llc.csv`` exists), the algebraic ones are not,
    and the "Undefined for this task" table says so in words — no number in any of its rows."""
    import re
    import warnings

    import pandas as pd

    import grokinterp.viz.report as R
    from grokinterp.analysis.llc import LLCWarning, SGLDConfig, llc_over_checkpoints
    from grokinterp.analysis.probes.vectors import vector_probes
    from grokinterp.analysis.summary import analyze_run

    monkeypatch.setattr(R, "REPORT_MAP_POINTS", 60)
    run = g.train(_digits(epochs=4, every=2), tmp_path / "r", progress=False)
    a = analyze_run(run)
    # the probe columns the report draws are vector_probes' values at the same checkpoints
    want = vector_probes(run, ["softmax_collapse", "update_cos", "logit_scale"], a.epochs)
    for c in ("sc_train", "sc_test", "logit_std", "logit_margin", "update_weight_cos"):
        np.testing.assert_array_equal(a.measures[c].to_numpy(), want[c].to_numpy())
    assert "rqi" not in a.measures.columns and a.measures["logit_std"].notna().all()

    def sections(text):
        return re.findall(r"<h2>(.*?)</h2>", text)

    text = R.render_report(a)
    heads = sections(text)
    for s in ("Headline numbers", "Training curves", "Weight norm", "Hidden layer, embedded", R.VECTOR_PROBES_TITLE,
              "Undefined for this task", "Configuration"):
        assert s in heads, s
    for s in ("Progress measures", "Phases", "Neuron frequency clusters", "Cluster sizes", "Attention",
              "Circuit ablations", "Embedding circles (clock or pizza)", "Local learning coefficient",
              "Probes of numerical stability and representation", "Embedding map (PCA and t-SNE)"):
        assert s not in heads, s
    assert not any(h.startswith("Fourier norms") or "Fourier basis" in h for h in heads)
    undefined = text.split("<h2>Undefined for this task</h2>")[1].split("<h2>")[0]
    rows = re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", undefined)
    assert len(rows) == len(R.VECTOR_UNDEFINED_SECTIONS) >= 6
    assert all(v.startswith("undefined for this task") and not re.search(r"\d", v) for _, v in rows)
    # with the LLC cached by `grokinterp llc`, the figure appears (the report itself never samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LLCWarning)
        llc = llc_over_checkpoints(run, SGLDConfig(epsilon=1e-4, gamma=10.0, nbeta=5.0, chains=2, draws=8,
                                                   batch_size=32))
    llc.to_csv(run.path / "llc.csv", index=False)
    path = R.write_report(run)
    heads = sections(path.read_text())
    assert "Local learning coefficient" in heads and heads.count("Local learning coefficient") == 1
    figs = dict((t, f) for t, _, f in R.report_figures(analyze_run(run)))
    np.testing.assert_allclose(figs["Local learning coefficient"].data[0].y, pd.read_csv(run.path / "llc.csv")["llc_mean"])
