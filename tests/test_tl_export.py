"""TransformerLens export: a TransformerLens 4.x bridge whose weights are ours and whose logits equal ours."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from _helpers import close, perturbed

from grokinterp.config import ModelConfig
from grokinterp.model.grid import grid_tokens
from grokinterp.model.tl_export import to_transformer_lens

SMALL = ModelConfig(p=7, d_model=8, n_heads=2, d_mlp=16)
HOOKS = ("hook_embed", "hook_pos_embed", "blocks.0.attn.hook_q", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z",
         "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post",
         "blocks.0.hook_resid_post")


def _check(model, bridge, cfg: ModelConfig) -> None:
    x = grid_tokens(cfg.p)
    with torch.no_grad():
        ours, ocache = model.run_with_cache(x)
        theirs, tcache = bridge.run_with_cache(x)
    assert theirs.shape == ours.shape == (cfg.p ** 2, 3, cfg.d_vocab_out)
    assert close(theirs, ours)
    for name in HOOKS:  # TransformerLens hook names carry the same activations
        assert tcache[name].shape == ocache[name].shape, name
        assert close(tcache[name], ocache[name]), name
    P = {k: v.detach() for k, v in model.named_parameters()}
    for L in range(cfg.n_layers):  # the bridge's weight properties are ours, unprocessed
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            assert torch.equal(getattr(bridge, name)[L], P[f"blocks.{L}.attn.{name}"]), name
        for name in ("W_in", "W_out", "b_in"):
            assert torch.equal(getattr(bridge, name)[L], P[f"blocks.{L}.mlp.{name}"]), name
    assert torch.equal(bridge.W_E, P["embed.W_E"]) and torch.equal(bridge.W_pos, P["pos_embed.W_pos"])
    assert torch.equal(bridge.W_U, P["unembed.W_U"]) and not bridge.b_U.any()


@pytest.mark.parametrize("cfg", [SMALL, dataclasses.replace(SMALL, eq_logit=True, act_fn="gelu"),
                                 dataclasses.replace(SMALL, n_layers=2, n_heads=4)])
def test_bridge_computes_our_model(cfg):
    model = perturbed(cfg, scale=1.0)
    bridge = to_transformer_lens({k: v.detach() for k, v in model.named_parameters()}, cfg)
    assert type(bridge).__name__ == "TransformerBridge" and not bridge.training
    _check(model, bridge, cfg)


def test_run_to_transformer_lens(tiny_run):
    for epoch in (0, int(tiny_run.epochs[len(tiny_run.epochs) // 2]), -1):
        _check(tiny_run.model(epoch), tiny_run.to_transformer_lens(epoch), tiny_run.config.model)
    # TransformerLens' tools work on it: e.g. its loss on the test pairs equals ours
    x, y = tiny_run.test_data()
    with torch.no_grad():
        tl_logits = tiny_run.to_transformer_lens(-1)(x)[:, -1]
    ours = tiny_run.evals.iloc[-1]["test_loss"]
    assert torch.nn.functional.cross_entropy(tl_logits.double(), y).item() == pytest.approx(ours, rel=1e-4, abs=1e-9)


def test_transformer_lens_is_imported_lazily():
    code = ("import sys, grokinterp.store.run, grokinterp.model.tl_export\n"
            "print('transformer_lens' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False"]


def test_bad_parameters_are_refused():
    from grokinterp.errors import ConfigError

    params = {k: v.detach() for k, v in perturbed(SMALL).named_parameters()}
    with pytest.raises(ConfigError, match=r"unembed.W_U: expected shape \[8, 7\]"):
        to_transformer_lens({**params, "unembed.W_U": torch.zeros(8, 8)}, SMALL)
    with pytest.raises(ConfigError, match="missing"):
        to_transformer_lens({k: v for k, v in params.items() if k != "embed.W_E"}, SMALL)
    # an attention coefficient below 1 blends softmax with constant attention: no TransformerLens equivalent
    with pytest.raises(ConfigError, match="model.attn_coeff"):
        to_transformer_lens(params, dataclasses.replace(SMALL, attn_coeff=0.5))
