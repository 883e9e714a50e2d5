"""The hooked model: TransformerLens names/shapes/hooks, seeded init, fast paths equal the plain forward."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import close as _close
from _helpers import perturbed as _perturbed
from transformer_lens import ActivationCache, HookedRootModule

from grokinterp.config import ModelConfig, make_config
from grokinterp.model import HookedGrokTransformer, init_params, param_shapes
from grokinterp.model.fastpath import FastPlan, fast_path_unsupported, final_logits
from grokinterp.model.grid import grid_forward, grid_tokens
from grokinterp.tasks import make_dataset

SMALL = ModelConfig(p=11, d_model=16, n_heads=4, d_mlp=32)


def test_parameter_names_and_shapes_follow_transformer_lens():
    cfg = make_config("paper").model
    model = HookedGrokTransformer(cfg)
    assert isinstance(model, HookedRootModule)
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    assert shapes == {
        "embed.W_E": (114, 128), "pos_embed.W_pos": (3, 128),
        "blocks.0.attn.W_Q": (4, 128, 32), "blocks.0.attn.W_K": (4, 128, 32),
        "blocks.0.attn.W_V": (4, 128, 32), "blocks.0.attn.W_O": (4, 32, 128),
        "blocks.0.mlp.W_in": (128, 512), "blocks.0.mlp.b_in": (512,),
        "blocks.0.mlp.W_out": (512, 128), "blocks.0.mlp.b_out": (128,),
        "unembed.W_U": (128, 113),
    }
    assert shapes == param_shapes(cfg)


def test_run_with_cache_returns_activation_cache_with_tl_hook_names():
    model = HookedGrokTransformer(SMALL)
    tokens = torch.tensor([[1, 2, 11], [3, 4, 11]])
    logits, cache = model.run_with_cache(tokens)
    assert isinstance(cache, ActivationCache)
    assert logits.shape == (2, 3, 11)
    expect = {
        "hook_embed": (2, 3, 16), "hook_pos_embed": (2, 3, 16),
        "blocks.0.hook_resid_pre": (2, 3, 16), "blocks.0.attn.hook_q": (2, 3, 4, 4),
        "blocks.0.attn.hook_k": (2, 3, 4, 4), "blocks.0.attn.hook_v": (2, 3, 4, 4),
        "blocks.0.attn.hook_attn_scores": (2, 4, 3, 3), "blocks.0.attn.hook_pattern": (2, 4, 3, 3),
        "blocks.0.attn.hook_z": (2, 3, 4, 4), "blocks.0.hook_attn_out": (2, 3, 16),
        "blocks.0.hook_resid_mid": (2, 3, 16), "blocks.0.mlp.hook_pre": (2, 3, 32),
        "blocks.0.mlp.hook_post": (2, 3, 32), "blocks.0.hook_mlp_out": (2, 3, 16),
        "blocks.0.hook_resid_post": (2, 3, 16),
    }
    for name, shape in expect.items():
        assert tuple(cache[name].shape) == shape, name
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 3))
    assert (pattern[:, :, 0, 1:] == 0).all(), "attention must be causal"


def test_hooks_intervene():
    model = HookedGrokTransformer(SMALL)
    tokens = torch.tensor([[1, 2, 11]])
    zero = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", lambda x, hook: x * 0)])
    _, cache = model.run_with_cache(tokens)
    resid_mid = cache["blocks.0.hook_resid_mid"]
    b_out = model.blocks[0].mlp.b_out
    assert torch.allclose(zero, (resid_mid + b_out) @ model.unembed.W_U, atol=1e-6)


def test_init_is_seeded_and_scaled_like_the_paper():
    cfg = make_config("paper").model
    a, b = init_params(cfg), init_params(cfg)
    c = init_params(ModelConfig(init_seed=1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.W_E"], c["embed.W_E"])
    assert abs(a["blocks.0.mlp.W_in"].std().item() - 1 / math.sqrt(128)) < 0.003
    assert abs(a["unembed.W_U"].std().item() - 1 / math.sqrt(114)) < 0.003
    assert (a["blocks.0.mlp.b_in"] == 0).all()


def test_general_forward_supports_more_layers():
    cfg = ModelConfig(p=7, d_model=8, n_heads=2, d_mlp=16, n_layers=2)
    model = HookedGrokTransformer(cfg)
    logits, cache = model.run_with_cache(torch.tensor([[1, 2, 7]]))
    assert logits.shape == (1, 3, 7) and "blocks.1.mlp.hook_post" in cache.cache_dict
    assert fast_path_unsupported(cfg, torch.tensor([[1, 2, 7]])) is not None




@pytest.mark.parametrize("cfg", [
    SMALL,
    ModelConfig(p=13, d_model=24, n_heads=3, d_mlp=40, act_fn="gelu"),
    make_config("paper").model,
])
def test_fast_path_equals_hooked_forward(cfg):
    model = _perturbed(cfg)
    ds = make_dataset(cfg.p)
    tokens = torch.from_numpy(ds.tokens[::3].copy())
    plan = FastPlan.build(cfg, tokens)
    params = dict(model.named_parameters())
    fast = final_logits(params, plan)
    with torch.no_grad():
        ref = model(tokens)[:, -1]
    assert _close(fast, ref)


def test_fast_path_gradients_equal_hooked_gradients():
    cfg = SMALL
    model = _perturbed(cfg, scale=1.0)
    ds = make_dataset(cfg.p)
    tokens, labels = torch.from_numpy(ds.tokens), torch.from_numpy(ds.labels)
    plan = FastPlan.build(cfg, tokens)

    def grads(fn):
        model.zero_grad()
        torch.nn.functional.cross_entropy(fn().double(), labels).backward()
        return {k: v.grad.clone() for k, v in model.named_parameters()}

    g_fast = grads(lambda: final_logits(dict(model.named_parameters()), plan))
    g_ref = grads(lambda: model(tokens)[:, -1])
    for k in g_ref:
        scale = g_ref[k].abs().max().item() + 1e-12
        assert (g_fast[k] - g_ref[k]).abs().max().item() < 1e-5 * max(scale, 1.0), k


def test_grid_forward_equals_model_on_grid_for_single_and_stacked_params():
    cfg = SMALL
    models = [_perturbed(cfg, seed=s) for s in range(3)]
    tokens = grid_tokens(cfg.p)
    stacked = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k in param_shapes(cfg)}
    out = grid_forward(stacked, cfg, return_post=True, return_pattern=True)
    for i, m in enumerate(models):
        logits, cache = m.run_with_cache(tokens)
        ref = logits[:, -1].reshape(cfg.p, cfg.p, -1)
        assert _close(out.logits[i], ref)
        post = cache["blocks.0.mlp.hook_post"][:, -1].reshape(cfg.p, cfg.p, -1)
        assert _close(out.post[i], post)
        pattern = cache["blocks.0.attn.hook_pattern"][:, :, -1].reshape(cfg.p, cfg.p, cfg.n_heads, 3)
        assert torch.allclose(out.pattern[i], pattern, atol=1e-6)
    single = grid_forward({k: v[1] for k, v in stacked.items()}, cfg)
    assert _close(single.logits, out.logits[1])


def test_head_scale_zero_removes_the_head():
    cfg = SMALL
    model = _perturbed(cfg)
    params = {k: v.detach() for k, v in model.named_parameters()}
    scale = torch.tensor([1.0, 0.0, 1.0, 1.0])
    out = grid_forward(params, cfg, head_scale=scale)

    def hook(z, hook):
        z[:, :, 1] = 0
        return z

    ref = model.run_with_hooks(grid_tokens(cfg.p), fwd_hooks=[("blocks.0.attn.hook_z", hook)])[:, -1]
    assert _close(out.logits.reshape(-1, cfg.p), ref)


GELU = ModelConfig(p=13, d_model=24, n_heads=3, d_mlp=40, act_fn="gelu")


def _assert_fast_grads_equal_hooked(cfg: ModelConfig, tokens: torch.Tensor, labels: torch.Tensor,
                                    seed: int = 0) -> None:
    """Cross-entropy gradients of every parameter: fast path vs the hooked model's forward."""
    model = _perturbed(cfg, scale=1.0, seed=seed)
    plan = FastPlan.build(cfg, tokens)

    def grads(fn):
        model.zero_grad()
        torch.nn.functional.cross_entropy(fn().double(), labels).backward()
        return {k: v.grad.clone() for k, v in model.named_parameters()}

    fast = final_logits(dict(model.named_parameters()), plan)
    with torch.no_grad():
        assert _close(fast, model(tokens)[:, -1])
    g_fast = grads(lambda: final_logits(dict(model.named_parameters()), plan))
    g_ref = grads(lambda: model(tokens)[:, -1])
    assert g_fast.keys() == g_ref.keys()
    for k in g_ref:
        assert g_ref[k].abs().max().item() > 0, f"{k}: the reference gradient is zero, the check is vacuous"
        assert _close(g_fast[k], g_ref[k]), k


def _subset(cfg: ModelConfig, keep) -> tuple[torch.Tensor, torch.Tensor]:
    ds = make_dataset(cfg.p)
    keep = keep(ds.tokens)
    return torch.from_numpy(ds.tokens[keep].copy()), torch.from_numpy(ds.labels[keep].copy())


def test_fast_path_gradients_equal_hooked_gradients_gelu():
    tokens, labels = _subset(GELU, lambda t: slice(None))
    _assert_fast_grads_equal_hooked(GELU, tokens, labels)


@pytest.mark.parametrize("cfg", [SMALL, GELU], ids=["relu", "gelu"])
@pytest.mark.parametrize("const_pos", [0, 1])
def test_fast_path_gradients_two_constant_positions(cfg, const_pos):
    # Position const_pos holds one token in every example, like '=': two constant positions,
    # so final_logits takes its general branch (constant rows through a dense product, one
    # varying position through the bag) instead of folding '=' into the bag.
    tokens, labels = _subset(cfg, lambda t: t[:, const_pos] == 3)
    assert len(tokens) == cfg.p and bool((tokens[:, const_pos] == 3).all())
    _assert_fast_grads_equal_hooked(cfg, tokens, labels, seed=1)


@pytest.mark.parametrize("cfg", [SMALL, GELU], ids=["relu", "gelu"])
def test_fast_path_gradients_single_example(cfg):
    # One example: every position is constant, nothing goes through the bag.
    tokens, labels = _subset(cfg, lambda t: (t[:, 0] == 5) & (t[:, 1] == 8))
    assert tokens.shape == (1, 3)
    _assert_fast_grads_equal_hooked(cfg, tokens, labels, seed=2)


def test_fast_path_gradients_small_token_set_gelu():
    # A handful of examples with repeated tokens at both varying positions (the transposed bag
    # accumulates several examples into one table row).
    tokens, labels = _subset(GELU, lambda t: ((t[:, 0] + 2 * t[:, 1]) % 5 == 0) & (t[:, 0] < 6))
    assert 3 <= len(tokens) < GELU.p ** 2 // 4
    _assert_fast_grads_equal_hooked(GELU, tokens, labels, seed=3)
