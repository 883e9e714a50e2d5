"""The model-family registry: each family answers the same protocol (grokinterp.model.families)."""

from __future__ import annotations

import pytest
import torch

import grokinterp as g
from grokinterp.model.families import FAMILIES, get_family, register_family


def test_an_unknown_family_is_refused_naming_the_field():
    with pytest.raises(g.ConfigError, match=r"^model\.family: unknown family 'nope'"):
        get_family("nope")
    with pytest.raises(g.ConfigError, match=r"^model\.family"):
        register_family("not a name", "x")


#: A small model of each family (every registered family must be listed).
SMALL = {"transformer": dict(d_model=8, n_heads=2, d_mlp=16), "mlp": dict(d_embed=4, d_hidden=16)}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_keeps_its_protocol(name):
    fam = get_family(name)
    cfg = g.make_config("tiny", p=7, family=name, **SMALL[name]).model
    assert cfg.family == name and cfg.n_params == sum(int(torch.Size(s).numel()) for s in fam.param_shapes(cfg).values())
    shapes = fam.param_shapes(cfg)
    params = fam.init_params(cfg)
    assert list(params) == list(shapes) and all(tuple(params[k].shape) == s for k, s in shapes.items())
    model = fam.hooked(cfg, init=False)
    assert {k: tuple(v.shape) for k, v in model.named_parameters()} == shapes
    model.load_params(params)
    tokens = torch.tensor([[1, 2, 7], [3, 4, 7]])
    logits, cache = model.run_with_cache(tokens)
    assert logits.shape[0] == 2 and logits.shape[-1] == cfg.d_vocab_out
    assert fam.hidden_hook(cfg) in cache.cache_dict and isinstance(fam.describe(cfg), str)
