"""Model families behind one protocol.

A family is a module that answers, for a model config of its kind (``cfg.family`` names it):

``param_shapes(cfg) -> {name: shape}``
    every parameter's (TransformerLens-style) name and shape, in initialisation order;
``init_params(cfg) -> {name: tensor}``
    one run's seeded initial parameters (CPU, float32);
``hooked(cfg, init=True) -> torch.nn.Module``
    the analysis module: a TransformerLens ``HookedRootModule`` whose named parameters are exactly
    :func:`param_shapes`, whose ``forward(tokens)`` takes the task's tokens ``[batch, n_ctx]`` and
    returns logits ``[batch, pos, d_vocab_out]`` read out at the last position (``[:, -1]``; a
    family without positions, the MLP, returns one position), whose ``load_params({name: tensor})``
    fills the parameters (checking names and shapes), and whose ``run_with_cache`` gives
    TransformerLens hook names;
``hidden_hook(cfg) -> str``
    the hook whose activations are the family's neurons (the hidden layer that neuron analyses read);
``describe(cfg) -> str``
    one line for ``info`` and reports;
``activation_bytes(cfg) -> int``
    bytes of activations one training example holds through a hooked forward and backward (the
    trainer's pre-flight memory estimate);
``forward(params, tokens, cfg, attn_coeff=None) -> Tensor``
    the functional forward over stacked parameters ``{name: [run, ...]}`` and tokens
    ``[run, batch, pos]``: logits ``[run, batch, d_vocab_out]`` (the stacked trainer's ``generic``
    implementation, where the family has no fast kernels).

Each family also owns its config: a frozen dataclass registered with
:func:`grokinterp.config.register_model_config` by a torch-free module that this package imports
(the transformer's is :class:`grokinterp.config.ModelConfig`; the MLP's
:mod:`grokinterp.model.families.mlp.config`). ``RunConfig.from_dict`` picks the class from
``model.family``; ``--help`` and ``info`` list its fields.

Training needs nothing more: one run trains its hooked module; a stack of ``R`` runs is one tensor
per parameter ``[run, ...]`` and trains through ``forward``. A family may also offer fast kernels (today's
transformer has the table fold of :mod:`~grokinterp.model.fastpath` and :mod:`~grokinterp.model.stacked`);
the training loop picks them where they apply.

The registry holds module paths, so looking a family up imports nothing heavy until it is used.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from ...errors import ConfigError
from .mlp import config as mlp_config  # noqa: F401  (registers the mlp family's config class; torch-free)

__all__ = ["FAMILIES", "register_family", "get_family", "family_of"]

#: Registered families: ``{name: module path}``.
FAMILIES: dict[str, str] = {"transformer": "grokinterp.model.families.transformer",
                            "mlp": "grokinterp.model.families.mlp"}


def register_family(name: str, module: str) -> None:
    """Register a family implemented by the module at ``module`` (a dotted path; see the module notes)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"model.family: a family name must be an identifier, got {name!r}")
    FAMILIES[name] = module


def get_family(name: str) -> ModuleType:
    """The module implementing family ``name`` (:class:`ConfigError` naming ``model.family`` if unknown)."""
    if name not in FAMILIES:
        raise ConfigError(f"model.family: unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name])


def family_of(cfg: Any) -> ModuleType:
    """The family module of a model config (``cfg.family``; a config without one is a transformer's)."""
    return get_family(getattr(cfg, "family", "transformer"))
