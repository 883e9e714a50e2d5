"""The model: families behind one protocol, the hooked transformer, and two fast forwards.

* :mod:`~grokinterp.model.families` — the model families (``transformer``, ``mlp``) and their registry;
  :func:`param_shapes`, :func:`init_params` and :func:`n_params` below answer for any family's config;
* :mod:`~grokinterp.model.params` — the transformer's names, shapes, seeded initialisation (torch only);
* :mod:`~grokinterp.model.hooked` — :class:`HookedGrokTransformer` on TransformerLens' ``HookedRootModule``;
* :mod:`~grokinterp.model.tables` — the per-(position, token) table fold shared by the two below;
* :mod:`~grokinterp.model.fastpath` — final-position training forward with a hand-written backward;
* :mod:`~grokinterp.model.grid` — every input of the task at every checkpoint, for analyses;
* :mod:`~grokinterp.model.tl_export` — the model as a TransformerLens 4.x ``TransformerBridge``;
* :mod:`~grokinterp.model.denormals` — denormal floats flushed to zero while grokinterp computes.

Importing this package imports no torch (the CLI reads the families' config classes through it);
``HookedGrokTransformer`` is loaded on first use (transformer_lens takes seconds to import).
"""

from __future__ import annotations

from typing import Any

from .families import family_of

__all__ = ["HookedGrokTransformer", "init_params", "n_params", "param_shapes"]


def param_shapes(cfg: Any) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in initialisation order, for a config of any family."""
    return family_of(cfg).param_shapes(cfg)


def init_params(cfg: Any) -> dict[str, Any]:
    """One run's seeded initial parameters (CPU, float32), for a config of any family."""
    return family_of(cfg).init_params(cfg)


def n_params(cfg: Any) -> int:
    """Number of scalar parameters (the config's formula: cheap even for absurd configs)."""
    return int(cfg.n_params)


def __getattr__(name: str) -> Any:
    if name == "HookedGrokTransformer":
        from .hooked import HookedGrokTransformer

        return HookedGrokTransformer
    raise AttributeError(f"module 'grokinterp.model' has no attribute {name!r}")
