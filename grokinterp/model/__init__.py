"""The model: parameter table and initialisation, the hooked transformer, and two fast forwards.

* :mod:`~grokinterp.model.params` — names, shapes, seeded initialisation (torch only);
* :mod:`~grokinterp.model.hooked` — :class:`HookedGrokTransformer` on TransformerLens' ``HookedRootModule``;
* :mod:`~grokinterp.model.tables` — the per-(position, token) table fold shared by the two below;
* :mod:`~grokinterp.model.fastpath` — final-position training forward with a hand-written backward;
* :mod:`~grokinterp.model.grid` — every input of the task at every checkpoint, for analyses;
* :mod:`~grokinterp.model.tl_export` — the model as a TransformerLens 4.x ``TransformerBridge``;
* :mod:`~grokinterp.model.denormals` — denormal floats flushed to zero while grokinterp computes.

``HookedGrokTransformer`` is loaded on first use (transformer_lens takes seconds to import).
"""

from __future__ import annotations

from typing import Any

from .params import init_params, n_params, param_shapes

__all__ = ["HookedGrokTransformer", "init_params", "n_params", "param_shapes"]


def __getattr__(name: str) -> Any:
    if name == "HookedGrokTransformer":
        from .hooked import HookedGrokTransformer

        return HookedGrokTransformer
    raise AttributeError(f"module 'grokinterp.model' has no attribute {name!r}")
