"""Paper-exact runs: the reference code's '=' logit, split, warm-up and initialisation, each checked
against a plain re-implementation of that code written here (transcribed from Nanda et al.'s
``transformers.py``: ``Transformer.__init__``, ``gen_train_test``, the ``LambdaLR`` warm-up)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _helpers import cli_here, close, paper_gen_train_test, perturbed

import grokinterp as g
from grokinterp.analysis.fourier import neuron_logit_fourier_norms
from grokinterp.analysis.inputs import residue_outputs, resolve_model
from grokinterp.config import ModelConfig, RunConfig, make_config
from grokinterp.errors import ConfigError
from grokinterp.model import HookedGrokTransformer, init_params, param_shapes
from grokinterp.model.fastpath import FastPlan, final_logits
from grokinterp.model.grid import grid_forward, grid_tokens
from grokinterp.tasks import make_dataset


# -- the reference code, transcribed (its own layout, its own draw order, the global RNG) -----------
class RefEmbed(nn.Module):
    def __init__(self, d_vocab, d_model):
        super().__init__()
        self.W_E = nn.Parameter(torch.randn(d_model, d_vocab) / np.sqrt(d_model))


class RefUnembed(nn.Module):
    def __init__(self, d_vocab, d_model):
        super().__init__()
        self.W_U = nn.Parameter(torch.randn(d_model, d_vocab) / np.sqrt(d_vocab))


class RefPosEmbed(nn.Module):
    def __init__(self, max_ctx, d_model):
        super().__init__()
        self.W_pos = nn.Parameter(torch.randn(max_ctx, d_model) / np.sqrt(d_model))


class RefAttention(nn.Module):
    def __init__(self, d_model, num_heads, d_head, n_ctx):
        super().__init__()
        self.W_K = nn.Parameter(torch.randn(num_heads, d_head, d_model) / np.sqrt(d_model))
        self.W_Q = nn.Parameter(torch.randn(num_heads, d_head, d_model) / np.sqrt(d_model))
        self.W_V = nn.Parameter(torch.randn(num_heads, d_head, d_model) / np.sqrt(d_model))
        self.W_O = nn.Parameter(torch.randn(d_model, d_head * num_heads) / np.sqrt(d_model))
        self.register_buffer("mask", torch.tril(torch.ones((n_ctx, n_ctx))))


class RefMLP(nn.Module):
    def __init__(self, d_model, d_mlp):
        super().__init__()
        self.W_in = nn.Parameter(torch.randn(d_mlp, d_model) / np.sqrt(d_model))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.randn(d_model, d_mlp) / np.sqrt(d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))


class RefBlock(nn.Module):
    def __init__(self, d_model, d_mlp, d_head, num_heads, n_ctx):
        super().__init__()
        self.attn = RefAttention(d_model, num_heads, d_head, n_ctx)
        self.mlp = RefMLP(d_model, d_mlp)


class RefTransformer(nn.Module):
    """``Transformer(config)`` of the reference code: the constructor order decides the draws."""

    def __init__(self, p, d_model, num_heads, d_mlp, num_layers, n_ctx=3):
        super().__init__()
        d_vocab = p + 1  # the reference Config: d_vocab = p + 1 for inputs and outputs
        self.embed = RefEmbed(d_vocab, d_model)
        self.pos_embed = RefPosEmbed(n_ctx, d_model)
        self.blocks = nn.ModuleList([RefBlock(d_model, d_mlp, d_model // num_heads, num_heads, n_ctx)
                                     for _ in range(num_layers)])
        self.unembed = RefUnembed(d_vocab, d_model)

    def forward(self, x):
        """The reference forward (its einsums, its mask), logits ``[batch, pos, p + 1]``."""
        resid = torch.einsum("dbp -> bpd", self.embed.W_E[:, x]) + self.pos_embed.W_pos[: x.shape[-1]]
        for blk in self.blocks:
            a = blk.attn
            k = torch.einsum("ihd,bpd->biph", a.W_K, resid)
            q = torch.einsum("ihd,bpd->biph", a.W_Q, resid)
            v = torch.einsum("ihd,bpd->biph", a.W_V, resid)
            scores = torch.einsum("biph,biqh->biqp", k, q)
            n = x.shape[-1]
            masked = torch.tril(scores) - 1e10 * (1 - a.mask[:n, :n])
            attn = F.softmax(masked / np.sqrt(a.W_Q.shape[1]), dim=-1)
            z = torch.einsum("biph,biqp->biqh", v, attn)
            z_flat = z.permute(0, 2, 1, 3).reshape(z.shape[0], n, -1)
            resid = resid + torch.einsum("df,bqf->bqd", a.W_O, z_flat)
            m = blk.mlp
            hid = F.relu(torch.einsum("md,bpd->bpm", m.W_in, resid) + m.b_in)
            resid = resid + torch.einsum("dm,bpm->bpd", m.W_out, hid) + m.b_out
        return resid @ self.unembed.W_U


def reference_init(seed: int, cfg: ModelConfig) -> RefTransformer:
    torch.manual_seed(seed)  # the published run's seed, set before Transformer(config)
    return RefTransformer(cfg.p, cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.n_layers)


CFG = ModelConfig(p=7, eq_logit=True, d_model=8, n_heads=2, d_mlp=16, init_method="paper")


# -- initialisation --------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [CFG, dataclasses.replace(CFG, n_layers=2, init_seed=5),
                                 dataclasses.replace(CFG, p=11, d_model=12, n_heads=3, d_mlp=20, init_seed=123)])
def test_paper_init_gives_the_reference_tensors_for_the_same_seed(cfg):
    ref = reference_init(cfg.init_seed, cfg)
    ours = init_params(cfg)
    h, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    assert torch.equal(ours["embed.W_E"], ref.embed.W_E.detach().T)
    assert torch.equal(ours["pos_embed.W_pos"], ref.pos_embed.W_pos.detach())
    assert torch.equal(ours["unembed.W_U"], ref.unembed.W_U.detach())  # [d_model, p + 1]: the '=' column too
    for L, blk in enumerate(ref.blocks):
        b = f"blocks.{L}"
        for name in ("W_Q", "W_K", "W_V"):  # theirs [head, d_head, d_model], ours [head, d_model, d_head]
            assert torch.equal(ours[f"{b}.attn.{name}"], getattr(blk.attn, name).detach().permute(0, 2, 1)), name
        # theirs W_O [d_model, (head d_head)]: column i·d_head + j is head i, coordinate j
        W_O = blk.attn.W_O.detach()
        for i in range(h):
            assert torch.equal(ours[f"{b}.attn.W_O"][i], W_O[:, i * e:(i + 1) * e].T)
        assert torch.equal(ours[f"{b}.mlp.W_in"], blk.mlp.W_in.detach().T)
        assert torch.equal(ours[f"{b}.mlp.W_out"], blk.mlp.W_out.detach().T)
        assert not ours[f"{b}.mlp.b_in"].any() and not ours[f"{b}.mlp.b_out"].any()
    assert list(ours) == list(param_shapes(cfg)) and ours["embed.W_E"].shape == (cfg.p + 1, d)
    # and the model built from them computes the reference's logits
    model = HookedGrokTransformer(cfg)
    x = torch.from_numpy(make_dataset(cfg.p).tokens)
    with torch.no_grad():
        assert close(model(x), ref(x))
        theirs = ref(x)[:, :, : model(x).shape[-1]]  # README: initial logits equal to float32 rounding
        assert (model(x) - theirs).abs().max() <= 5e-7 * max(1.0, theirs.abs().max().item())


def test_every_torch_seed_is_an_init_seed_and_survives_run_json(tmp_path):
    """The published code never seeds torch: its model comes from the global generator, whose
    ``torch.initial_seed()`` is any unsigned 64-bit value. Every one of them is accepted as
    ``--init-seed`` and kept exact through ``run.json``, so such a run's initial tensors can be given back."""
    top = 2 ** 64 - 1
    torch.manual_seed(2 ** 63 + 12345)  # as if a fresh process had drawn a seed in the upper half
    recorded = torch.initial_seed()
    ref = RefTransformer(CFG.p, CFG.d_model, CFG.n_heads, CFG.d_mlp, CFG.n_layers)  # unseeded, as published
    assert recorded >= 2 ** 63
    assert torch.equal(init_params(dataclasses.replace(CFG, init_seed=recorded))["embed.W_E"], ref.embed.W_E.detach().T)
    out = tmp_path / "run"
    code, _, err = cli_here("train", "--preset", "tiny", "--p", "7", "--d-model", "8", "--n-heads", "2", "--d-mlp", "16",
                            "--eq-logit", "true", "--init-method", "paper", "--init-seed", str(top), "--epochs", "2",
                            "--every", "1", "--log-early", "0", "--out", str(out))
    assert code == 0, err
    run = g.load_run(out)
    assert run.config.model.init_seed == top and type(run.config.model.init_seed) is int
    assert run.info["seeds"]["init_seed"] == top
    assert torch.equal(run.params(0)["embed.W_E"], reference_init(top, CFG).embed.W_E.detach().T)
    with pytest.raises(ConfigError, match=r"model.init_seed: must lie in \[0, 18446744073709551615\]"):
        dataclasses.replace(CFG, init_seed=top + 1)
    code, _, err = cli_here("train", "--preset", "tiny", "--init-seed", str(top + 1), "--out", str(tmp_path / "no"))
    assert code == 2 and "model.init_seed" in err and not (tmp_path / "no").exists()


def test_paper_init_without_eq_logit_drops_only_the_eq_column():
    cfg = dataclasses.replace(CFG, eq_logit=False)
    ref = reference_init(0, cfg)
    ours = init_params(cfg)
    assert torch.equal(ours["unembed.W_U"], ref.unembed.W_U.detach()[:, : cfg.p])
    assert torch.equal(ours["embed.W_E"], ref.embed.W_E.detach().T)


def test_default_init_is_unchanged_and_differs_from_paper_init():
    cfg = dataclasses.replace(CFG, init_method="default", eq_logit=False)
    gen = torch.Generator().manual_seed(0)  # the documented default: one generator, our order and layout
    expected = {n: (torch.zeros(s) if n.split(".")[-1].startswith("b_") else
                    torch.randn(s, generator=gen) / (cfg.d_vocab if n == "unembed.W_U" else cfg.d_model) ** 0.5)
                for n, s in param_shapes(cfg).items()}
    ours = init_params(cfg)
    assert all(torch.equal(ours[n], expected[n]) for n in expected)
    assert not torch.equal(ours["embed.W_E"], init_params(dataclasses.replace(cfg, init_method="paper"))["embed.W_E"])


# -- split and warm-up ------------------------------------------------------------------------------
@pytest.mark.parametrize("p,frac,seed", [(7, 0.3, 0), (13, 0.5, 7), (113, 0.3, 1)])
def test_paper_split_is_the_paper_gen_train_test(frac, p, seed):
    train, test = paper_gen_train_test(frac, p, seed)
    cfg = make_config("tiny", p=p, frac_train=frac, split_seed=seed, split_method="paper")
    trn, tst = g.tasks.split_pairs(cfg.task)
    assert np.array_equal(trn, np.sort([a * p + b for a, b, _ in train]))
    assert np.array_equal(tst, np.sort([a * p + b for a, b, _ in test]))
    assert len(trn) == int(frac * p * p)  # floor, where the 'random' method rounds


def test_paper_warmup_is_the_reference_lambdalr():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(step / 10, 1))
    lrs = []
    for _ in range(15):  # the reference loop: step with the current lr, then scheduler.step()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    tc = make_config("paper-exact").train
    assert [tc.lr_at(e) for e in range(15)] == pytest.approx(lrs, rel=1e-12, abs=0)
    assert tc.lr_at(0) == 0.0
    default = make_config("paper").train
    assert [default.lr_at(e) for e in range(12)] == pytest.approx([1e-3 * min((e + 1) / 10, 1) for e in range(12)])


# -- the preset and the config ----------------------------------------------------------------------
def test_paper_exact_preset_and_eq_logit_kept_in_step():
    c = make_config("paper-exact")
    assert (c.task.eq_logit, c.model.eq_logit, c.task.split_method, c.train.warmup_style, c.model.init_method) == \
        (True, True, "paper", "paper", "paper")
    assert (c.model.d_vocab, c.model.d_vocab_out, c.task.task().d_vocab_out) == (114, 114, 114)
    assert dataclasses.replace(c, task=make_config("paper").task, model=make_config("paper").model,
                               train=make_config("paper").train) == make_config("paper")
    for override in ({"eq_logit": True}, {"task.eq_logit": True}, {"model.eq_logit": True}):
        cfg = make_config("tiny", **override)
        assert cfg.task.eq_logit and cfg.model.eq_logit and cfg.model.d_vocab_out == 32
    with pytest.raises(ConfigError, match="model.eq_logit: must equal task.eq_logit"):
        RunConfig(task=c.task, model=dataclasses.replace(c.model, eq_logit=False), train=c.train)
    for field, value in (("init_method", "xavier"), ("warmup_style", "cosine"), ("split_method", "stratified")):
        with pytest.raises(ConfigError, match=field):
            make_config("tiny", **{field: value})
    assert RunConfig.from_dict(c.to_dict()) == c


# -- the '=' logit through the model and the analyses ----------------------------------------------
def test_fast_path_and_grid_forward_with_eq_logit():
    model = perturbed(CFG, scale=1.0)
    ds = make_dataset(CFG.p)
    tokens, labels = torch.from_numpy(ds.tokens), torch.from_numpy(ds.labels)
    plan = FastPlan.build(CFG, tokens)
    params = dict(model.named_parameters())
    with torch.no_grad():
        ref = model(tokens)[:, -1]
    assert ref.shape == (CFG.p ** 2, CFG.p + 1)
    assert close(final_logits(params, plan), ref)
    model.zero_grad()
    F.cross_entropy(final_logits(params, plan).double(), labels).backward()
    g_fast = {k: v.grad.clone() for k, v in params.items()}
    model.zero_grad()
    F.cross_entropy(model(tokens)[:, -1].double(), labels).backward()
    for k, v in params.items():
        assert close(g_fast[k], v.grad), k
    out = grid_forward({k: v.detach() for k, v in params.items()}, CFG)
    assert out.logits.shape == (CFG.p, CFG.p, CFG.p + 1)
    with torch.no_grad():
        assert close(out.logits, model(grid_tokens(CFG.p))[:, -1].reshape(CFG.p, CFG.p, -1))


def test_analyses_see_the_residue_logits():
    model = perturbed(CFG)
    params, cfg = resolve_model(model)
    assert params["unembed.W_U"].shape == (CFG.d_model, CFG.p) and not cfg.eq_logit
    W_U = dict(model.named_parameters())["unembed.W_U"].detach()
    assert torch.equal(params["unembed.W_U"], W_U[:, : CFG.p])
    # a raw dict: the '=' column is recognised by the shapes (W_U has as many outputs as W_E tokens)
    raw = {k: v.detach() for k, v in model.named_parameters()}
    assert torch.equal(residue_outputs(raw)[0]["unembed.W_U"], W_U[:, : CFG.p])
    assert residue_outputs(residue_outputs(raw)[0])[0]["unembed.W_U"].shape[-1] == CFG.p  # idempotent
    # Fourier norms of W_L over Z_p, not Z_{p+1}
    W_L = raw["blocks.0.mlp.W_out"] @ W_U[:, : CFG.p]
    assert torch.allclose(neuron_logit_fourier_norms(model), neuron_logit_fourier_norms(W_L))


def test_a_paper_exact_run_trains_and_is_analysed(tmp_path):
    cfg = make_config("tiny", p=13, epochs=60, eval_every=10, every=20, log_early=0, eq_logit=True,
                      split_method="paper", warmup_style="paper", init_method="paper", split_seed=3, init_seed=4)
    run = g.train(cfg, tmp_path / "run", progress=False)
    # the reference's split and initial tensors
    train, _ = paper_gen_train_test(cfg.task.frac_train, 13, 3)
    assert np.array_equal(run.split_pairs()[0], np.sort([a * 13 + b for a, b, _ in train]))
    ref = reference_init(4, cfg.model)
    assert torch.equal(run.params(0)["embed.W_E"], ref.embed.W_E.detach().T)
    assert torch.equal(run.params(0)["unembed.W_U"], ref.unembed.W_U.detach())
    # the warm-up's first step has lr 0: AdamW leaves the weights as they were (decay lr·wd = 0 too)
    m = run.metrics
    assert m["lr"][0] == 0.0 and m["train_loss"][1] == m["train_loss"][0]
    # the training loss includes '=' in the softmax; analyses use the 13 residue logits
    x, y = run.train_data()
    with torch.no_grad():
        logits = run.model(0)(x)[:, -1]
    assert logits.shape[-1] == 14
    assert m["train_loss"][0] == pytest.approx(F.cross_entropy(logits.double(), y).item(), rel=1e-6)
    pm = g.progress_measures(run, key_freqs=[1, 2])
    with torch.no_grad():
        res = F.cross_entropy(run.model(int(pm["epoch"].iloc[-1]))(x)[:, -1, :13].double(), y).item()
    assert pm["train_loss"].iloc[-1] == pytest.approx(res, rel=1e-4)
    # ... but the weight norm is the model's, '=' column included
    e = int(pm["epoch"].iloc[-1])
    full = sum(v.double().pow(2).sum().item() for v in run.params(e).values())
    assert pm["sum_sq_weights"].iloc[-1] == pytest.approx(full, rel=1e-9)
    assert full > full - run.params(e)["unembed.W_U"][:, 13].double().pow(2).sum().item()
    analysis = g.analyze_run(run, key_freqs=[1, 2])
    assert analysis.logit_fit is not None and analysis.W_L_norms.shape[-1] == 13
