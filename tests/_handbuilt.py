"""Hand-built one-layer models of a + b mod p that implement the pizza and the clock algorithm exactly
as Zhong et al. (2023) describe them (used by tests/test_algorithms.py)."""

from __future__ import annotations

import math

import torch

from grokinterp.config import ModelConfig
from grokinterp.model import HookedGrokTransformer, param_shapes


def _empty(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(s) for k, s in param_shapes(cfg).items()}


def _cos_sin(p: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(p, dtype=torch.float64)
    return torch.cos(2 * math.pi * k * t / p), torch.sin(2 * math.pi * k * t / p)


def pizza_model(p: int = 31, k: int = 3, n_dirs: int = 16, scale: float = 5.0,
                attn_coeff: float = 0.0) -> HookedGrokTransformer:
    """Constant attention (``attn_coeff = 0``) sums the circle embeddings ``E_a + E_b``; the MLP takes
    ``|u_i · (E_a + E_b)|`` for ``n_dirs`` directions ``u_i`` at angles ``ψ_i = π i / n_dirs`` and writes
    ``Σ_i |u_i·v| (cos 2ψ_i, sin 2ψ_i)``, read out against ``(cos wc, sin wc)``: the logits are
    ``∝ |cos(w(a−b)/2)| cos(w(a+b−c))`` (the second harmonic of ``|cos|``), Zhong et al.'s pizza.
    ``attn_coeff = 1``: the same pizza through softmax attention whose scores are all 0 (weights 1/3 on
    ``a``, ``b`` and ``=``; the values are scaled by 3), which the architecture does not force."""
    cfg = ModelConfig(p=p, d_model=8, n_heads=2, d_mlp=2 * n_dirs, attn_coeff=attn_coeff)
    if attn_coeff not in (0.0, 1.0):
        raise ValueError("attn_coeff: 0 or 1")
    v = 1.0 if attn_coeff == 0.0 else 3.0
    P = _empty(cfg)
    c, s = _cos_sin(p, k)
    P["embed.W_E"][:p, 0], P["embed.W_E"][:p, 1] = c.float(), s.float()
    P["blocks.0.attn.W_V"][0, 0, 0] = P["blocks.0.attn.W_V"][0, 1, 1] = v  # head 0 copies the circle
    P["blocks.0.attn.W_O"][0, 0, 2] = P["blocks.0.attn.W_O"][0, 1, 3] = 1.0  # ... into dims 2, 3
    for i in range(n_dirs):
        psi = math.pi * i / n_dirs
        u = torch.tensor([math.cos(psi), math.sin(psi)])
        for j, sign in enumerate((1.0, -1.0)):
            n = 2 * i + j
            P["blocks.0.mlp.W_in"][2:4, n] = sign * u
            P["blocks.0.mlp.W_out"][n, 4] = math.cos(2 * psi)
            P["blocks.0.mlp.W_out"][n, 5] = math.sin(2 * psi)
    P["unembed.W_U"][4], P["unembed.W_U"][5] = scale * c.float(), scale * s.float()
    return HookedGrokTransformer(cfg, init=False).load_params(P).eval()


def clock_model(p: int = 31, k: int = 3, step: float = 0.1, scale: float = 5.0) -> HookedGrokTransformer:
    """Softmax attention with head 0 on position 0 and head 1 on position 1 copies ``E_a`` and ``E_b`` into
    separate dimensions; the MLP multiplies them (``xy = ((x+y)² − (x−y)²)/4``, each square a piecewise-
    linear ReLU interpolant with knots every ``step``) into ``cos(w(a+b))``, ``sin(w(a+b))``, read out
    against ``(cos wc, sin wc)``: logits ``∝ cos(w(a+b−c))``, Nanda et al.'s clock."""
    knots = int(round(2.0 / step))
    forms = [((1, 0, 1, 0), 0, 0.25), ((1, 0, -1, 0), 0, -0.25), ((0, 1, 0, 1), 0, -0.25), ((0, 1, 0, -1), 0, 0.25),
             ((0, 1, 1, 0), 1, 0.25), ((0, 1, -1, 0), 1, -0.25), ((1, 0, 0, 1), 1, 0.25), ((1, 0, 0, -1), 1, -0.25)]
    cfg = ModelConfig(p=p, d_model=12, n_heads=2, d_mlp=len(forms) * 2 * knots, attn_coeff=1.0)
    P = _empty(cfg)
    c, s = _cos_sin(p, k)
    W_E = P["embed.W_E"]
    W_E[:p, 0], W_E[:p, 1] = c.float(), s.float()
    W_E[p, 8] = 1.0  # '=' marks the query
    P["pos_embed.W_pos"][0, 6] = P["pos_embed.W_pos"][1, 7] = 1.0  # position markers
    big = 30.0 * math.sqrt(cfg.d_head)  # attention score 30 on the chosen position, 0 elsewhere
    for h, (marker, dst) in enumerate(((6, 2), (7, 4))):
        P["blocks.0.attn.W_Q"][h, 8, 0] = big
        P["blocks.0.attn.W_K"][h, marker, 0] = 1.0
        P["blocks.0.attn.W_V"][h, 0, 0] = P["blocks.0.attn.W_V"][h, 1, 1] = 1.0
        P["blocks.0.attn.W_O"][h, 0, dst] = P["blocks.0.attn.W_O"][h, 1, dst + 1] = 1.0
    n = 0
    for form, out_dim, coeff in forms:
        f = torch.tensor(form, dtype=torch.float32)
        for sign in (1.0, -1.0):
            for j in range(knots):  # z² ≈ Σ_j s_j relu(±z − j·step), s_0 = step, s_j = 2·step
                P["blocks.0.mlp.W_in"][2:6, n] = sign * f
                P["blocks.0.mlp.b_in"][n] = -j * step
                P["blocks.0.mlp.W_out"][n, 9 + out_dim] = coeff * (step if j == 0 else 2 * step)
                n += 1
    P["unembed.W_U"][9], P["unembed.W_U"][10] = scale * c.float(), scale * s.float()
    return HookedGrokTransformer(cfg, init=False).load_params(P).eval()
