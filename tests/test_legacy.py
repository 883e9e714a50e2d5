"""import-legacy: the paper's and the TransformerLens demo's .pth layouts, read without unpickling code.

The files are made here, small, with the same layout as the originals; the paper's forward pass is
re-implemented from its published code (its own parameter layout) so the import is checked against
it, not against our own model.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers import paper_gen_train_test
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import grokinterp as g
import grokinterp.store.legacy as legacy_mod
from grokinterp.errors import RunError
from grokinterp.store.integrity import verify
from grokinterp.store.legacy import import_legacy
from grokinterp.store.run import RunWarning

PY = sys.executable
P, D, H, MLP = 7, 8, 2, 16  # small model: p, d_model, n_heads, d_mlp
E_HEAD = D // H


# -- the paper's model, in its own layout (transcribed from its transformers.py) -----------------
def paper_state_dict(gen: torch.Generator, p: int = P, n_layers: int = 1) -> OrderedDict:
    sd = OrderedDict()
    sd["embed.W_E"] = torch.randn(D, p + 1, generator=gen)
    sd["pos_embed.W_pos"] = torch.randn(3, D, generator=gen)
    for L in range(n_layers):
        b = f"blocks.{L}"
        for name in ("W_K", "W_Q", "W_V"):
            sd[f"{b}.attn.{name}"] = torch.randn(H, E_HEAD, D, generator=gen)
        sd[f"{b}.attn.W_O"] = torch.randn(D, E_HEAD * H, generator=gen) / 2
        sd[f"{b}.attn.mask"] = torch.tril(torch.ones(3, 3))
        sd[f"{b}.mlp.W_in"] = torch.randn(MLP, D, generator=gen) / 2
        sd[f"{b}.mlp.b_in"] = torch.randn(MLP, generator=gen) / 4
        sd[f"{b}.mlp.W_out"] = torch.randn(D, MLP, generator=gen) / 2
        sd[f"{b}.mlp.b_out"] = torch.randn(D, generator=gen) / 4
    sd["unembed.W_U"] = torch.randn(D, p + 1, generator=gen)
    return sd


def paper_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[batch, pos, p + 1]`` as the paper's Transformer computes them."""
    resid = sd["embed.W_E"][:, x].permute(1, 2, 0) + sd["pos_embed.W_pos"][: x.shape[-1]]
    L = 0
    while f"blocks.{L}.attn.W_Q" in sd:
        b = f"blocks.{L}"
        k = torch.einsum("ihd,bpd->biph", sd[f"{b}.attn.W_K"], resid)
        q = torch.einsum("ihd,bpd->biph", sd[f"{b}.attn.W_Q"], resid)
        v = torch.einsum("ihd,bpd->biph", sd[f"{b}.attn.W_V"], resid)
        scores = torch.einsum("biph,biqh->biqp", k, q)
        n = x.shape[-1]
        mask = sd[f"{b}.attn.mask"][:n, :n]
        masked = torch.tril(scores) - 1e10 * (1 - mask)
        attn = F.softmax(masked / math.sqrt(E_HEAD), dim=-1)
        z = torch.einsum("biph,biqp->biqh", v, attn)
        z_flat = z.permute(0, 2, 1, 3).reshape(z.shape[0], n, -1)  # b i q h -> b q (i h)
        resid = resid + torch.einsum("df,bqf->bqd", sd[f"{b}.attn.W_O"], z_flat)
        hid = F.relu(torch.einsum("md,bpd->bpm", sd[f"{b}.mlp.W_in"], resid) + sd[f"{b}.mlp.b_in"])
        resid = resid + torch.einsum("dm,bpm->bpd", sd[f"{b}.mlp.W_out"], hid) + sd[f"{b}.mlp.b_out"]
        L += 1
    return resid @ sd["unembed.W_U"]


def _loss(sd, pairs, p):
    x = torch.tensor(pairs)
    labels = (x[:, 0] + x[:, 1]) % p
    return F.cross_entropy(paper_forward(sd, x)[:, -1].double(), labels).item()


def make_paper_file(path, *, seed=3, frac=0.5, labels=(0, 10, 20), n_epochs=25, config_extra=None):
    """A full_run_data.pth-like file whose recorded losses are consistent with its weights and split."""
    gen = torch.Generator().manual_seed(0)
    sds = [paper_state_dict(gen) for _ in labels]
    train, test = paper_gen_train_test(frac, P, seed)
    train_losses = [1.0 + 0.01 * i for i in range(n_epochs)]
    test_losses = [2.0 + 0.01 * i for i in range(n_epochs)]
    for e, sd in zip(labels, sds):  # saved after the step of epoch e: the model after e + 1 steps
        if e + 1 < n_epochs:
            train_losses[e + 1] = _loss(sd, train, P)
            test_losses[e + 1] = _loss(sd, test, P)
    config = {"lr": 1e-3, "weight_decay": 1.0, "p": P, "d_model": D, "fn_name": "add", "frac_train": frac,
              "num_epochs": n_epochs, "save_models": True, "save_every": 10, "seed": seed, "num_layers": 1,
              "d_vocab": P + 1, "n_ctx": 3, "d_mlp": MLP, "num_heads": H, "act_type": "ReLU", "use_ln": False}
    config.update(config_extra or {})
    torch.save({"state_dicts": sds, "epochs": list(labels), "train_losses": train_losses,
                "test_losses": test_losses, "config": config}, path)
    return sds, train, test


# -- the TransformerLens demo layout ---------------------------------------------------------------
def tl_state_dict(gen: torch.Generator, bias: float = 0.0) -> OrderedDict:
    sd = OrderedDict()
    sd["embed.W_E"] = torch.randn(P + 1, D, generator=gen)
    sd["pos_embed.W_pos"] = torch.randn(3, D, generator=gen)
    for name in ("W_Q", "W_K", "W_V"):
        sd[f"blocks.0.attn.{name}"] = torch.randn(H, D, E_HEAD, generator=gen)
    sd["blocks.0.attn.W_O"] = torch.randn(H, E_HEAD, D, generator=gen) / 2
    for name in ("b_Q", "b_K", "b_V"):
        sd[f"blocks.0.attn.{name}"] = torch.zeros(H, E_HEAD)
    sd["blocks.0.attn.b_O"] = torch.full((D,), bias)
    sd["blocks.0.attn.mask"] = torch.tril(torch.ones(3, 3, dtype=torch.bool))
    sd["blocks.0.attn.IGNORE"] = torch.tensor(-float("inf"))
    sd["blocks.0.mlp.W_in"] = torch.randn(D, MLP, generator=gen) / 2
    sd["blocks.0.mlp.b_in"] = torch.zeros(MLP)
    sd["blocks.0.mlp.W_out"] = torch.randn(MLP, D, generator=gen) / 2
    sd["blocks.0.mlp.b_out"] = torch.zeros(D)
    sd["unembed.W_U"] = torch.randn(D, P, generator=gen)
    sd["unembed.b_U"] = torch.zeros(P)
    return sd


_TL_MODULE = "transformer_lens.HookedTransformerConfig"


@dataclass
class FakeHookedTransformerConfig:
    """Pickled under TransformerLens' name, as the demo's ``model.cfg`` is."""

    n_layers: int = 1
    d_model: int = D
    d_head: int = E_HEAD
    n_heads: int = H
    d_mlp: int = MLP
    d_vocab: int = P + 1
    d_vocab_out: int = P
    n_ctx: int = 3
    act_fn: str = "relu"
    normalization_type: object = None
    seed: int = 999
    device: object = None
    dtype: object = torch.float32


@pytest.fixture
def tl_config_class(monkeypatch):
    fake = types.ModuleType(_TL_MODULE)
    FakeHookedTransformerConfig.__module__ = _TL_MODULE
    FakeHookedTransformerConfig.__qualname__ = "HookedTransformerConfig"
    fake.HookedTransformerConfig = FakeHookedTransformerConfig
    monkeypatch.setitem(sys.modules, _TL_MODULE, fake)
    yield FakeHookedTransformerConfig


def make_tl_file(path, config, *, bias=0.0, n_epochs=30, every=10):
    gen = torch.Generator().manual_seed(1)
    labels = [e for e in range(n_epochs) if (e + 1) % every == 0]  # the demo: checkpoint_epochs.append(epoch)
    ckpts = [tl_state_dict(gen, bias) for _ in labels]
    torch.manual_seed(2)
    idx = torch.randperm(P * P)
    train_idx, test_idx = idx[: P * P // 3], idx[P * P // 3:]
    ds = g.make_dataset(P)
    tokens, labels_all = torch.from_numpy(ds.tokens), torch.from_numpy(ds.labels)

    def loss(sd, rows):
        model = g.HookedGrokTransformer(g.make_config("tiny", p=P, d_model=D, n_heads=H, d_mlp=MLP).model, init=False)
        model.load_params({k: v for k, v in sd.items() if k in dict(model.named_parameters())})
        with torch.no_grad():
            return F.cross_entropy(model(tokens[rows])[:, -1].double(), labels_all[rows]).item()

    train_losses = [0.5] * n_epochs
    test_losses = [0.7] * n_epochs
    for e, sd in zip(labels, ckpts):
        if bias == 0.0:
            if e + 1 < n_epochs:
                train_losses[e + 1] = loss(sd, train_idx)  # computed before the step of epoch e + 1
            test_losses[e] = loss(sd, test_idx)  # computed after the step of epoch e
    torch.save({"model": ckpts[-1], "config": config, "checkpoints": ckpts, "checkpoint_epochs": labels,
                "test_losses": test_losses, "train_losses": train_losses, "train_indices": train_idx,
                "test_indices": test_idx}, path)
    return ckpts, labels, train_idx, test_idx


# -- tests: the paper layout -----------------------------------------------------------------------
def test_paper_split_replays_the_papers_gen_train_test():
    for p, frac, seed in [(7, 0.5, 3), (11, 0.3, 0), (13, 0.7, 598), (113, 0.3, 0)]:
        train, test = paper_gen_train_test(frac, p, seed)
        trn, tst = g.get_task("add", p).split(frac, seed, "paper")
        assert np.array_equal(trn, np.sort([a * p + b for a, b, _ in train]))
        assert np.array_equal(tst, np.sort([a * p + b for a, b, _ in test]))


def test_import_paper_layout_matches_the_papers_forward(tmp_path):
    src = tmp_path / "full_run_data.pth"
    sds, train, _ = make_paper_file(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunWarning)
        run = import_legacy(src, tmp_path / "run")
    info = run.info["imported_from"]
    assert info["layout"] == "paper" and info["epoch_offset"] == 1
    assert "derived from seed 3" in info["split"]
    assert info["loss_check"]["agrees"] and info["loss_check"]["compared"] == 6
    assert run.epochs.tolist() == [1, 11, 21]  # labelled 0, 10, 20: saved after the step
    c = run.config
    assert (c.task.p, c.model.d_model, c.model.n_heads, c.model.d_mlp, c.task.operation) == (P, D, H, MLP, "add")
    assert c.train.epochs == 24 and c.train.lr == 1e-3 and c.train.warmup_epochs == 10
    assert c.train.warmup_style == "paper" and c.task.split_method == "paper" and c.model.init_method == "paper"
    assert c.task.eq_logit and c.model.d_vocab_out == P + 1  # the '=' logit is kept
    # the split is the paper's, stored
    trn, _ = run.split_pairs()
    assert np.array_equal(trn, np.sort([a * P + b for a, b, _ in train]))
    # our model computes the paper's logits ('=' included), at every checkpoint
    ds = g.make_dataset(P)
    x = torch.from_numpy(ds.tokens)
    for e, sd in zip(run.epochs, sds):
        with torch.no_grad():
            ours = run.model(int(e))(x)
        assert ours.shape[-1] == P + 1
        assert torch.allclose(ours, paper_forward(sd, x), atol=1e-4, rtol=1e-4)
    # metrics: recorded losses (paper: index i is our epoch i), accuracies at checkpoints
    m = run.metrics
    assert len(m) == 25 and m["train_loss"].notna().all()
    assert m["train_loss"][11] == pytest.approx(_loss(sds[1], train, P), rel=1e-6)
    assert m.loc[m["epoch"].isin(run.epochs), "test_acc"].notna().all()
    assert g.resume(run.path, progress=False).epochs.tolist() == [1, 11, 21]  # nothing to train
    assert not (run.path / "state.safetensors").exists()
    assert verify(run.path).ok


def test_paper_wrong_split_seed_is_flagged(tmp_path):
    src = tmp_path / "full_run_data.pth"
    make_paper_file(src)
    with pytest.warns(RunWarning, match="split"):
        run = import_legacy(src, tmp_path / "run", split_seed=4)
    assert not run.info["imported_from"]["loss_check"]["agrees"]
    with pytest.warns(RunWarning, match="epoch offset"):
        import_legacy(src, tmp_path / "run0", epoch_offset=0)


def test_paper_without_seed_or_with_layernorm_is_refused(tmp_path):
    src = tmp_path / "a.pth"
    make_paper_file(src, config_extra={"seed": None})
    with pytest.raises(RunError, match="no 'seed'"):
        import_legacy(src, tmp_path / "run")
    run = import_legacy(src, tmp_path / "run", split_seed=3)  # the user supplies it
    assert run.info["imported_from"]["loss_check"]["agrees"]
    src2 = tmp_path / "b.pth"
    make_paper_file(src2, config_extra={"use_ln": True})
    with pytest.raises(RunError, match="LayerNorm"):
        import_legacy(src2, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()


def test_paper_wrong_shapes_are_refused_naming_the_parameter(tmp_path):
    src = tmp_path / "a.pth"
    gen = torch.Generator().manual_seed(0)
    sds = [paper_state_dict(gen), paper_state_dict(gen)]
    sds[1]["blocks.0.mlp.W_out"] = torch.zeros(D, MLP + 1)
    torch.save({"state_dicts": sds, "epochs": [0, 5], "train_losses": [], "test_losses": [],
                "config": {"p": P, "frac_train": 0.5, "seed": 0}}, src)
    with pytest.raises(RunError, match=r"epoch 6: blocks\.0\.mlp\.W_out has shape \[8, 17\]"):
        import_legacy(src, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run*"))


# -- the paper repository's saved_runs/*.pth: one final model under 'model' -----------------------
def train_saved_run(path, *, seed=2, frac=0.3, steps=120, test_every=10, lr=1e-2, wd=0.1, config=None,
                    optimizer=True, scheduler=True, epoch_key=True):
    """A saved_runs-like file, made as the paper's Trainer makes it: full-batch AdamW with the LambdaLR
    warm-up, losses recorded before each step (the test loss every ``test_every`` epochs), and the
    model, optimizer and scheduler state saved after the last step."""
    gen = torch.Generator().manual_seed(5)
    sd = OrderedDict((k, v if k.endswith("mask") else v / math.sqrt(D)) for k, v in paper_state_dict(gen).items())
    leaves = [v.requires_grad_() for k, v in sd.items() if not k.endswith("mask")]
    train, test = paper_gen_train_test(frac, P, seed)
    xs = {n: torch.tensor(d) for n, d in (("train", train), ("test", test))}
    opt = torch.optim.AdamW(leaves, lr=lr, weight_decay=wd, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(step / 10, 1))

    def loss(x):
        return F.cross_entropy(paper_forward(sd, x)[:, -1].double(), (x[:, 0] + x[:, 1]) % P)

    train_losses, test_losses = [], []
    for epoch in range(steps):
        tl = loss(xs["train"])
        train_losses.append(tl.item())
        if epoch % test_every == 0:
            with torch.no_grad():
                test_losses.append(loss(xs["test"]).item())
        tl.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    obj = {"model": OrderedDict((k, v.detach().clone()) for k, v in sd.items()), "train_losses": train_losses,
           "test_losses": test_losses}
    if optimizer:
        obj["optimizer"] = opt.state_dict()
    if scheduler:
        obj["scheduler"] = sched.state_dict()
    if epoch_key:
        obj["epoch"] = steps - 1
    if config is not None:
        obj["config"] = config
    torch.save(obj, path)
    return obj, train, test


def test_import_saved_run_without_config_needs_the_split_and_infers_p_from_shapes(tmp_path):
    src = tmp_path / "mod_addition_no_wd.pth"
    obj, train, test = train_saved_run(src)
    with pytest.raises(RunError, match=r"--split-seed N\) and frac_train \(--frac-train X\)"):
        import_legacy(src, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunWarning)
        run = import_legacy(src, tmp_path / "run", split_seed=2, frac_train=0.3)
    info = run.info["imported_from"]
    assert info["layout"] == "paper" and info["container"] == "model"
    assert any("p = 7 read off the shapes" in n for n in info["notes"])
    # W_E is [8, 8] here (d_model = d_vocab): the layout was told by W_O and W_pos, not W_E
    assert obj["model"]["embed.W_E"].shape == (D, P + 1) == (8, 8)
    c = run.config
    assert (c.task.p, c.task.eq_logit, c.model.d_vocab_out, c.task.split_method) == (P, True, P + 1, "paper")
    assert (c.train.lr, c.train.weight_decay, c.train.warmup_style) == (1e-2, 0.1, "paper")  # from the optimizer
    assert run.epochs.tolist() == [120] == [obj["scheduler"]["last_epoch"]]  # after 120 steps
    trn, _ = run.split_pairs()
    assert np.array_equal(trn, np.sort([a * P + b for a, b, _ in train]))
    # the model is the file's: logits (with '=') equal the paper's forward
    x = torch.from_numpy(g.make_dataset(P).tokens)
    with torch.no_grad():
        assert torch.allclose(run.model(-1)(x), paper_forward(obj["model"], x), atol=1e-5, rtol=1e-5)
    # the curves: train loss every epoch, test loss every 10 epochs, at the right epochs
    m = run.metrics.set_index("epoch")
    assert np.allclose(m["train_loss"].to_numpy()[:120], obj["train_losses"])
    assert np.allclose(m.loc[list(range(0, 120, 10)), "test_loss"], obj["test_losses"])
    assert m["test_loss"].iloc[1:10].isna().all()
    # the loss check: the final model's train loss against the one recorded a step earlier
    check = info["loss_check"]
    assert check["kind"] == "adjacent" and check["agrees"] and not check["inconclusive"]
    assert check["worst"]["recorded_epoch"] == 119 and check["worst"]["epoch"] == 120
    final = run.evals.iloc[-1]
    assert final["epoch"] == 120 and final["train_acc"] == 1.0 and final["test_loss"] > 4 * final["train_loss"]
    assert verify(run.path).ok


def test_saved_run_wrong_seed_is_flagged_and_partial_config_is_used(tmp_path):
    src = tmp_path / "wd_10-1.pth"
    cfg = {"lr": 1e-2, "p": P, "d_model": D, "fn_name": "add", "frac_train": 0.3, "seed": 2, "weight_decay": 1}
    train_saved_run(src, config=cfg)
    run = import_legacy(src, tmp_path / "run")  # seed and frac_train from the partial config
    info = run.info["imported_from"]
    assert info["loss_check"]["agrees"] and "derived from seed 2" in info["split"]
    assert run.config.train.weight_decay == 0.1  # the optimizer's, not the config's stale 1
    assert any("config weight_decay = 1 but the optimizer state says 0.1" in n for n in info["notes"])
    with pytest.warns(RunWarning, match="split"):
        bad = import_legacy(src, tmp_path / "bad", split_seed=3)
    assert not bad.info["imported_from"]["loss_check"]["agrees"]


def test_saved_run_epoch_sources_and_irregular_test_curve(tmp_path):
    src = tmp_path / "a.pth"
    train_saved_run(src, optimizer=False, scheduler=False, epoch_key=False, steps=50, test_every=1)
    run = import_legacy(src, tmp_path / "run", split_seed=2, frac_train=0.3)
    assert run.epochs.tolist() == [50]  # one train loss per step: the model after 50 steps
    assert run.config.train.weight_decay == 1.0 and any("weight_decay not recorded" in n
                                                         for n in run.info["imported_from"]["notes"])
    obj = torch.load(src, weights_only=True)
    obj["test_losses"] = obj["test_losses"][:7]  # 7 values for 50 epochs: no regular spacing
    obj["epoch"] = 60  # disagrees with len(train_losses): noted, the step count wins
    torch.save(obj, src)
    with pytest.warns(RunWarning, match="no regular spacing"):
        run = import_legacy(src, tmp_path / "run2", split_seed=2, frac_train=0.3)
    assert run.metrics["test_loss"].iloc[:50].isna().all() and run.epochs.tolist() == [50]
    assert any("'epoch' + epoch_offset 1 = 61" in n for n in run.info["imported_from"]["notes"])


def test_layout_is_told_by_shapes_not_keys(tmp_path, tl_config_class):
    # a TransformerLens-layout model under 'model' alone (no checkpoint list) is the demo's
    src = tmp_path / "demo.pth"
    make_tl_file(src, tl_config_class())
    obj = torch.load(src, weights_only=False)
    for k in ("checkpoints", "checkpoint_epochs"):
        del obj[k]
    torch.save(obj, src)
    run = import_legacy(src, tmp_path / "tl")
    assert run.info["imported_from"]["layout"] == "tl-demo" and run.epochs.tolist() == [30]
    # a paper-layout model under 'model' is the paper's, whatever the container
    src2 = tmp_path / "paper.pth"
    train_saved_run(src2, steps=20)
    with pytest.raises(RunError, match="shapes are the 'paper' layout, not 'tl-demo'"):
        import_legacy(src2, tmp_path / "x", layout="tl-demo", split_seed=2, frac_train=0.3)
    assert legacy_mod.param_layout(tl_state_dict(torch.Generator()), "sd", src) == "tl-demo"
    assert legacy_mod.param_layout(paper_state_dict(torch.Generator()), "sd", src) == "paper"


def test_saved_run_refusals_never_guess_p(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = paper_state_dict(gen)
    cases = {
        "wrong_outputs": ({**sd, "unembed.W_U": torch.randn(D, P - 1)}, {}, r"W_U has 6 outputs, expected p = 7"),
        "stale_vocab": (sd, {"p": 5, "seed": 0, "frac_train": 0.3}, r"config p = 5 but embed.W_E has 8 tokens"),
        "positions": ({**sd, "pos_embed.W_pos": torch.randn(18, D)}, {}, r"W_pos has 18 positions"),
    }
    for name, (state, cfg, match) in cases.items():
        src = tmp_path / f"{name}.pth"
        torch.save({"model": state, "train_losses": [1.0], "config": cfg}, src)
        with pytest.raises(RunError, match=match):
            import_legacy(src, tmp_path / name, split_seed=0, frac_train=0.3)
        assert not (tmp_path / name).exists()
    torch.save({"train_losses": [1.0, 0.5], "test_losses": [1.0, 0.9]}, tmp_path / "curves.pth")
    with pytest.raises(RunError, match="loss curves but no model"):
        import_legacy(tmp_path / "curves.pth", tmp_path / "c")


def test_cli_import_saved_run(tmp_path):
    src = tmp_path / "saved.pth"
    train_saved_run(src, steps=40)
    res = subprocess.run([PY, "-m", "grokinterp", "import-legacy", str(src), str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "--split-seed" in res.stderr and "--frac-train" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run([PY, "-m", "grokinterp", "import-legacy", str(src), str(tmp_path / "r"), "--split-seed", "2",
                          "--frac-train", "0.3"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "loss check (one step apart)" in res.stdout and "agrees" in res.stdout and "checkpoints under 'model'" \
        in res.stdout


# -- tests: the TransformerLens demo layout --------------------------------------------------------
def test_import_tl_demo_layout_with_pickled_config_object(tmp_path, tl_config_class):
    src = tmp_path / "grokking_demo.pth"
    ckpts, labels, train_idx, test_idx = make_tl_file(src, tl_config_class())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunWarning)
        run = import_legacy(src, tmp_path / "run")
    info = run.info["imported_from"]
    assert info["layout"] == "tl-demo" and info["split"].startswith("stored in the file")
    assert info["loss_check"]["agrees"] and info["loss_check"]["compared"] >= 4
    assert run.epochs.tolist() == [e + 1 for e in labels] == [10, 20, 30]
    trn, tst = run.split_pairs()
    assert np.array_equal(trn, np.sort(train_idx.numpy())) and np.array_equal(tst, np.sort(test_idx.numpy()))
    assert run.config.model.init_seed == 999
    for e, sd in zip(run.epochs, ckpts):
        params = run.params(int(e))
        for name, t in params.items():
            assert torch.equal(t, sd[name]), name
    assert verify(run.path).ok


def test_tl_demo_nonzero_bias_is_refused(tmp_path, tl_config_class):
    src = tmp_path / "demo.pth"
    make_tl_file(src, tl_config_class(), bias=0.5)
    with pytest.raises(RunError, match=r"blocks\.0\.attn\.b_O is non-zero"):
        import_legacy(src, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_tl_demo_with_dict_config_and_layernorm_refused(tmp_path, tl_config_class):
    src = tmp_path / "demo.pth"
    make_tl_file(src, {"normalization_type": "LN", "d_model": D})
    with pytest.raises(RunError, match="normalization_type"):
        import_legacy(src, tmp_path / "run")


# -- refusing code execution and bad files ---------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass
class _MyConfig:
    p: int = 7


def test_file_that_needs_unpickling_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    torch.save({"state_dicts": [], "epochs": [], "config": _Evil(marker)}, src)
    with pytest.raises(RunError, match="refused: the file needs arbitrary unpickling"):
        import_legacy(src, tmp_path / "run")
    assert not marker.exists()
    src2 = tmp_path / "cfg.pth"
    torch.save({"state_dicts": [], "epochs": [], "config": _MyConfig()}, src2)
    with pytest.raises(RunError, match="_MyConfig"):
        import_legacy(src2, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_damaged_or_foreign_files_are_refused(tmp_path):
    src = tmp_path / "a.pth"
    make_paper_file(src)
    data = src.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="cannot read as a torch checkpoint"):
        import_legacy(tmp_path / "trunc.pth", tmp_path / "run")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(RunError, match="unknown layout"):
        import_legacy(tmp_path / "other.pth", tmp_path / "run")
    with pytest.raises(RunError, match="no such file"):
        import_legacy(tmp_path / "missing.pth", tmp_path / "run")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(RunError, match="not empty"):
        import_legacy(src, tmp_path / "busy")


def test_what_is_not_a_regular_file_is_named_and_never_read(tmp_path):
    import time

    pipe = tmp_path / "pipe.pth"
    os.mkfifo(pipe)
    (tmp_path / "dev.pth").symlink_to("/dev/zero")
    (tmp_path / "dangling.pth").symlink_to(tmp_path / "gone.pth")
    t0 = time.perf_counter()
    for name, what in (("pipe.pth", r"a FIFO \(named pipe\), not a regular file"),
                       ("dev.pth", "a character device, not a regular file"), ("dir", "a directory, not a regular file"),
                       ("dangling.pth", "no such file \\(a symbolic link to")):
        if name == "dir":
            (tmp_path / "dir").mkdir()
        with pytest.raises(RunError, match=what):
            import_legacy(tmp_path / name, tmp_path / "run")
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "run").exists()


def test_a_record_that_would_be_inflated_is_refused_before_reading(tmp_path):
    import zipfile

    src = tmp_path / "a.pth"
    make_paper_file(src)
    packed = tmp_path / "deflated.pth"  # torch's records, and one that torch would inflate
    packed.write_bytes(src.read_bytes())
    with zipfile.ZipFile(packed, "a", zipfile.ZIP_DEFLATED) as zout:
        big = f"{zout.infolist()[0].filename.split('/')[0]}/data/999"
        with zout.open(big, "w", force_zip64=True) as f:  # 256 MiB of zeros in ~250 KB
            for _ in range(256):
                f.write(bytes(1 << 20))
    assert packed.stat().st_size < 2 << 20
    with pytest.raises(RunError, match=rf"record '{big}' is compressed \(zip method 8, \d+ bytes declared to "
                                       rf"inflate to 268435456\); torch.save never compresses"):
        import_legacy(packed, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    import_legacy(src, tmp_path / "run")  # what torch wrote (stored records) still imports


def test_cli_import_legacy_and_verify(tmp_path):
    src = tmp_path / "full_run_data.pth"
    make_paper_file(src)
    out = tmp_path / "run"
    res = subprocess.run([PY, "-m", "grokinterp", "import-legacy", str(src), str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "derived from seed 3" in res.stdout and "agrees" in res.stdout
    info = json.loads((out / "run.json").read_text())
    assert info["imported_from"]["layout"] == "paper"
    res = subprocess.run([PY, "-m", "grokinterp", "verify", str(out)], capture_output=True, text=True)
    assert res.returncode == 0 and "OK" in res.stdout
    torch.save({"state_dicts": [], "config": _Evil(tmp_path / "pwned")}, tmp_path / "evil.pth")
    res = subprocess.run([PY, "-m", "grokinterp", "import-legacy", str(tmp_path / "evil.pth"), str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "refused" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "pwned").exists()


# -- fuzz: odd contents of a legacy file ----------------------------------------------------------
_ODD = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.floats(allow_nan=True), st.text(max_size=4),
                 st.lists(st.integers(-2, 30), max_size=4), st.builds(torch.zeros, st.integers(0, 3)))


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_legacy_files_import_or_refuse_cleanly(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("legacy-fuzz")
    src = root / "f.pth"
    make_paper_file(src)
    obj = torch.load(src, weights_only=True)
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(["top", "config", "state_dict", "truncate"]))
        if where == "top":
            obj[data.draw(st.sampled_from(["state_dicts", "epochs", "train_losses", "test_losses", "config"]))] = \
                data.draw(_ODD)
        elif where == "config" and isinstance(obj.get("config"), dict):
            obj["config"][data.draw(st.sampled_from(sorted(obj["config"])))] = data.draw(_ODD)
        elif where == "state_dict" and isinstance(obj.get("state_dicts"), list) and obj["state_dicts"] \
                and isinstance(obj["state_dicts"][0], dict):
            sd = obj["state_dicts"][0]
            key = data.draw(st.sampled_from(sorted(sd)))
            sd[key] = data.draw(st.one_of(st.builds(torch.zeros, st.integers(0, 9), st.integers(1, 9)), _ODD))
    torch.save(obj, src)
    if data.draw(st.booleans()):
        raw = src.read_bytes()
        src.write_bytes(raw[: data.draw(st.integers(0, len(raw)))])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunWarning)
            run = import_legacy(src, root / "run")
        assert verify(run.path).ok
    except g.GrokinterpError:
        assert not (root / "run").exists()


def test_a_pre_zip_torch_file_is_not_taken_for_a_zip_by_bytes_near_its_end(tmp_path):
    """torch tells its zip format by the first four bytes; a legacy (pre-zip) file whose last bytes happen to
    hold a zip end-of-directory record (tensor data can) is still read as the legacy file it is."""
    import struct
    import zipfile

    src = tmp_path / "a.pth"
    make_paper_file(src)
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(src, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    # an end-of-directory record claiming one entry (torch's legacy reader stops before these bytes)
    legacy.write_bytes(legacy.read_bytes() + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, 46, 0, 0))
    assert legacy.read_bytes()[:4] != b"PK\x03\x04" and zipfile.is_zipfile(legacy)
    run = import_legacy(legacy, tmp_path / "run")
    assert run.epochs[-1] == import_legacy(src, tmp_path / "ref").epochs[-1]
