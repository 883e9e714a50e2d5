"""torch's own optimizers, built as the trainer built them before one loop (issue 19): the oracle the
registry's entries (``grokinterp.training.optim``) are compared with, bit for bit on CPU."""

from __future__ import annotations

import torch
from torch import Tensor

from grokinterp.training.optim import param_groups
from grokinterp.training.transforms import orthogonalize_


class TorchOrthoAdamW(torch.optim.AdamW):
    """⊥AdamW as earlier releases built it: torch's AdamW on gradients made orthogonal first."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    orthogonalize_(p, p.grad)
        return super().step(closure)


def torch_optimizer(params: dict[str, torch.nn.Parameter], tc, fused: bool = True) -> torch.optim.Optimizer:
    """torch's optimizer for ``tc`` over ``params`` (decay groups of ``tc.weight_decay_on``)."""
    kw = {"lr": tc.lr, **({"fused": True} if fused else {"foreach": False})}
    groups = param_groups(params, tc)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=tc.momentum, weight_decay=tc.weight_decay, **kw)
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "ortho_adamw": TorchOrthoAdamW}[tc.optimizer]
    return cls(groups, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay, **kw)


def torch_state_tensors(opt: torch.optim.Optimizer, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """``opt``'s per-parameter state as a run's state file keys it, ``{"opt/<name>/<slot>": tensor}``."""
    name_of = {id(p): k for k, p in params.items()}
    names = [name_of[id(p)] for group in opt.param_groups for p in group["params"]]
    out: dict[str, Tensor] = {}
    for idx, slots in opt.state_dict()["state"].items():
        for slot, val in slots.items():
            if val is not None:
                out[f"opt/{names[idx]}/{slot}"] = val if torch.is_tensor(val) else torch.tensor(val)
    return out


def step_singles(singles, tcs, layout, grad: Tensor, e: int) -> None:
    """One step of each run's own torch optimizer beside a stacked one: run ``r``'s ``(params, optimizer, ...)``
    in ``singles`` takes its schedule's lr at epoch ``e`` (``tcs[r].lr_at(e)``) and its row of the stacked
    gradient ``grad`` ``[runs, total]``, split by ``layout``."""
    for r, (ps, o, *_) in enumerate(singles):
        for group in o.param_groups:
            group["lr"] = tcs[r].lr_at(e)
        for k, v in layout.views(grad[r]).items():
            ps[k].grad = v.clone()
        o.step()
