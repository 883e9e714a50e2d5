"""The model on every input ``(a, b)`` of the grid at once, vectorised over checkpoints.

Analyses need the final-position activations of all ``p²`` inputs, often for hundreds of
checkpoints. :func:`grid_forward` computes them from (stacked) parameters with the same
per-(position, token) tables as the training fast path, batched over a leading ``ckpt`` axis,
and exposes the intervention points the circuit ablations need (per-head scaling of the
attention output, a function applied to the neuron activations, and to the logits).

Shapes use the axis names ``ckpt a b h d_model d_mlp vocab``; a single model's parameters
(no ``ckpt`` axis) are accepted and the axis is dropped from the outputs again.

Example:
    >>> out = grid_forward(run.stacks(), run.config.model, return_post=True)   # doctest: +SKIP
    >>> out.logits.shape, out.post.shape      # [ckpt, p, p, p], [ckpt, p, p, d_mlp]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig
from ..errors import AnalysisError
from . import tables
from .families.transformer import fast_kernels_apply

__all__ = ["GridOutput", "grid_forward", "grid_tokens", "grid_bytes", "grid_rows", "GRID_BUDGET", "fold_unsupported",
           "generic_grid_forward", "grid_outputs", "n_neurons", "neuron_logit_map", "model_tokens"]

#: Working memory aimed at per forward of the grid when a caller does not say (bytes).
GRID_BUDGET = 768 * 2 ** 20

PostFn = Callable[[Tensor], Tensor]


@dataclass
class GridOutput:
    """Final-position outputs over the ``(a, b)`` grid.

    Attributes:
        logits: ``[ckpt, a, b, vocab]`` float32.
        post: ``[ckpt, a, b, d_mlp]`` neuron activations after the non-linearity (when asked).
        pattern: ``[ckpt, a, b, h, key_pos]`` attention of the ``=`` position (when asked).
    """

    logits: Tensor
    post: Tensor | None = None
    pattern: Tensor | None = None


def grid_tokens(p: int) -> Tensor:
    """All ``[a, b, =]`` inputs in row-major order (``index = a * p + b``): ``[p², 3]``."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.reshape(-1), b.reshape(-1), torch.full((p * p,), p)], dim=1)


def grid_bytes(cfg: ModelConfig) -> int:
    """Working memory of one checkpoint's whole-grid analysis (bytes, an estimate): the forward's
    ``acc [p², d_mlp + p]`` (twice while summing), pre- and post-activations, logits, then float64
    copies of the logits for the losses and projections."""
    p, dm = cfg.p, n_neurons(cfg)
    return 4 * p * p * (3 * (dm + p) + 2 * dm + 2 * p) + 8 * 3 * p ** 3


def grid_rows(cfg: ModelConfig, budget: int = GRID_BUDGET) -> int | None:
    """Rows ``a`` per forward that keep one checkpoint under ``budget`` (``None``: the whole grid fits).

    ``S6`` (720 symbols) with ``d_mlp = 512`` would need ~22 GB at once: about 25 rows per block on CPU."""
    need = grid_bytes(cfg)
    if need <= budget:
        return None
    return int(max(budget // (need // cfg.p + 1), 1))


def grid_forward(
    params: dict[str, Tensor],
    cfg: ModelConfig,
    *,
    head_scale: Tensor | None = None,
    post_fn: PostFn | None = None,
    return_post: bool = False,
    return_pattern: bool = False,
    rows: tuple[int, int] | None = None,
) -> GridOutput:
    """Final-position logits (and optionally neurons and attention) on the full ``p × p`` grid.

    Args:
        params: TransformerLens-named parameters, each ``[...]`` or stacked ``[ckpt, ...]``.
        cfg: the model config (``n_layers`` must be 1).
        head_scale: ``[h]`` or ``[ckpt, h]`` multipliers of each head's output (0 ablates a head).
        post_fn: applied to the neuron activations ``[ckpt, a, b, d_mlp]`` before the unembedding
            (zero-/mean-ablation, replacement by an approximation). Its result is what
            ``post`` reports.
        return_post, return_pattern: also return neuron activations / attention pattern.
        rows: ``(start, stop)``: only the inputs with ``start ≤ a < stop`` (the outputs' ``a`` axis then
            has ``stop − start`` entries). Large grids (``S6``: 720³ logits per checkpoint) are analysed
            in such blocks of rows; ``post_fn`` then sees the block.

    Notes:
        With ``EP[j, t] = W_E[t] + W_pos[j]`` and the query of ``=``, the scores of key position
        ``j`` are a table ``S[j, t, h]``; each head's value-output read into ``[W_in | W_U]`` is a
        table ``T[j, t, h, :]``. For input ``(a, b)``:
        ``[pre | direct] = EP[2, =][W_in | W_U] + Σ_h A0 T[0, a] + A1 T[1, b] + A2 T[2, =]``
        with ``A = softmax(S[0, a], S[1, b], S[2, =])`` (blended to ``c · A + (1 − c)`` for an
        attention coefficient ``c = cfg.attn_coeff < 1``, Zhong et al. 2023), then
        ``logits = direct + act(pre + b_in) W_out W_U + b_out W_U``.
        Equal to ``model(grid_tokens(p))[:, -1]`` up to float32 rounding (tested).
    """
    reason = fast_kernels_apply(cfg)
    if reason:
        raise AnalysisError(f"grid_forward folds one-layer [a, b, =] models without LayerNorm: {reason}")
    W_E = params["embed.W_E"]
    single = W_E.ndim == 2
    P = {k: (v.unsqueeze(0) if single else v).float() for k, v in params.items()}
    W_E = P["embed.W_E"]
    p, V, H, dm = cfg.p, cfg.d_vocab, cfg.n_heads, cfg.d_mlp
    if W_E.shape[-2:] != (V, cfg.d_model):
        raise AnalysisError(f"embed.W_E has shape {list(W_E.shape)}, expected [ckpt, {V}, {cfg.d_model}] for p = {p}")
    W_pos = P["pos_embed.W_pos"]
    W_Q, W_K, W_V, W_O = (P[f"blocks.0.attn.{n}"] for n in ("W_Q", "W_K", "W_V", "W_O"))
    W_in, b_in, W_out, b_out = (P[f"blocks.0.mlp.{n}"] for n in ("W_in", "b_in", "W_out", "b_out"))
    W_U = P["unembed.W_U"]
    n = W_E.shape[0]

    a0, a1 = (0, p) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= a0 < a1 <= p:
        raise AnalysisError(f"rows: expected 0 ≤ start < stop ≤ {p}, got {rows!r}")
    A = a1 - a0
    EP = W_E[:, None, :, :] + W_pos[:, :3, None, :]  # [ckpt, pos, vocab, d_model]
    x_eq = EP[:, 2, p]  # [ckpt, d_model]
    kq = tables.query_key_map(x_eq, W_Q, W_K)  # [ckpt, d_model, h]
    s0 = torch.einsum("cvd,cdh->cvh", EP[:, 0, a0:a1], kq)  # [ckpt, a, h]
    s1 = torch.einsum("cvd,cdh->cvh", EP[:, 1, :p], kq)  # [ckpt, b, h]
    s2 = torch.einsum("cd,cdh->ch", x_eq, kq)  # [ckpt, h]
    # Softmax over the three key positions, each probability its own contiguous [ckpt, a, b, h]
    # tensor (a strided slice of a stacked pattern makes the einsums below several times slower).
    m = torch.maximum(torch.maximum(s0[:, :, None], s1[:, None, :]), s2[:, None, None])
    p0 = (s0[:, :, None] - m).exp_()
    p1 = (s1[:, None, :] - m).exp_()
    p2 = (s2[:, None, None] - m).exp_()
    z = p0 + p1 + p2
    p0.div_(z), p1.div_(z), p2.div_(z)
    a = float(cfg.attn_coeff)
    if a != 1.0:  # attention coefficient (Zhong et al.): every weight a·softmax + (1 − a)
        for w in (p0, p1, p2):
            w.mul_(a).add_(1.0 - a)
    total = a + 3 * (1.0 - a)  # p0 + p1 + p2 (1 for softmax attention)

    W_read = tables.read_weights(W_in, W_U)  # [ckpt, d_model, d_mlp + vocab]
    OV_read = tables.ov_read(W_O, W_read)  # [ckpt, h, d_head, k]
    if head_scale is not None:
        hs = head_scale.to(OV_read).reshape(-1, H)
        OV_read = OV_read * hs[:, :, None, None]

    def table(x: Tensor) -> Tensor:  # [ckpt, t, d_model] -> [ckpt, t, h, k]
        return tables.value_table(x, W_V, OV_read).contiguous()

    T0, T1, T2 = table(EP[:, 0, a0:a1]), table(EP[:, 1, :p]), table(x_eq[:, None])[:, 0]
    # p2 = total − p0 − p1: Σ_j p_j T_j = total Σ_h T2 + p0 (T0 − T2) + p1 (T1 − T2). The constant
    # part (total Σ_h T2, the residual stream of "=" read into [W_in | W_U], b_in, b_out W_U) rides along
    # as an extra "head" with weight 1, and the p1 term is accumulated in place through a
    # transposed view: two batched matmuls write acc once (no temporaries, no extra passes).
    T2_sum = T2.sum(1) if total == 1.0 else T2.sum(1) * total
    const = tables.constant_read(x_eq, W_read, b_in, b_out, W_U) + T2_sum  # [ckpt, k]
    K = const.shape[-1]
    w0 = torch.cat([p0, p0.new_ones(n, A, p, 1)], dim=-1)  # [ckpt, a, b, h + 1]
    U0 = torch.cat([T0 - T2[:, None], const[:, None, None, :].expand(n, A, 1, K)], dim=2)  # [ckpt, a, h + 1, k]
    acc = torch.bmm(w0.reshape(n * A, p, H + 1), U0.reshape(n * A, H + 1, K)).reshape(n, A, p, K)
    U1 = T1 - T2[:, None]  # [ckpt, b, h, k]
    for i in range(n):  # per checkpoint: acc[i, :, b] += p1[i, :, b] @ U1[i, b]
        acc[i].transpose(0, 1).baddbmm_(p1[i].transpose(0, 1), U1[i])
    acc = acc.reshape(n, A * p, -1)
    pre = acc[..., :dm]  # [ckpt, a*b, d_mlp], a strided view of acc
    if cfg.act_fn == "relu" and post_fn is None and not return_post:
        post = pre.relu_()  # in place: nobody else sees the pre-activations
    else:
        post = F.relu(pre) if cfg.act_fn == "relu" else F.gelu(pre)
        if post_fn is not None:
            post = post_fn(post.reshape(n, A, p, dm)).reshape(n, A * p, dm)
    W_L = W_out @ W_U  # [ckpt, d_mlp, vocab]
    logits = torch.baddbmm(acc[..., dm:], post, W_L).reshape(n, A, p, -1)
    post = post.reshape(n, A, p, dm)
    pattern = torch.stack([p0, p1, p2], dim=-1) if return_pattern else None

    def squeeze(t: Tensor | None) -> Tensor | None:
        return t[0] if (single and t is not None) else t

    return GridOutput(squeeze(logits), squeeze(post) if return_post else None,
                      squeeze(pattern) if return_pattern else None)


# ---------------------------------------------------------------------------------------------------------
# Every family (issue 19): the grid through the family's hooked module
# ---------------------------------------------------------------------------------------------------------

def fold_unsupported(cfg: Any) -> str | None:
    """Why :func:`grid_forward` (the one-layer transformer's table fold) cannot compute ``cfg``'s grid
    (``None``: it can): the training kernels' conditions
    (:func:`~grokinterp.model.families.transformer.fast_kernels_apply`: another family, more than one layer,
    LayerNorm, other biases, the ``a_b`` layout). Another model goes through :func:`generic_grid_forward`."""
    return fast_kernels_apply(cfg)


def n_neurons(cfg: Any) -> int:
    """Width of the family's neuron layer (:func:`hidden_hook`): ``d_mlp`` of a transformer, ``d_hidden`` of an MLP."""
    for name in ("d_mlp", "d_hidden"):
        if hasattr(cfg, name):
            return int(getattr(cfg, name))
    raise AnalysisError(f"model: the {getattr(cfg, 'family', '?')} family names no neuron width (d_mlp / d_hidden)")


def neuron_logit_map(params: dict[str, Tensor], cfg: Any) -> tuple[Tensor | None, str]:
    """``(W_L [..., neurons, vocab], what it is)``: the linear map from the family's neurons to the logits.

    Transformer: ``W_L = W_out W_U`` of the last block (exact without LayerNorm; with ``ln_final`` the neurons
    reach the logits through the final LayerNorm's input-dependent scale, so ``W_L`` is their direction only
    — said in the text). MLP: the last hidden layer feeds the unembedding directly, so ``W_L = W_U``.
    ``(None, why)`` where the family has no such map.
    """
    family = getattr(cfg, "family", "transformer")
    W_U = params.get("unembed.W_U")
    if family == "transformer":
        W_out = params.get(f"blocks.{cfg.n_layers - 1}.mlp.W_out")
        if W_out is None or W_U is None:
            return None, "W_L: the parameters hold no blocks.L.mlp.W_out / unembed.W_U"
        what = f"W_L = blocks.{cfg.n_layers - 1}.mlp.W_out · W_U"
        if getattr(cfg, "layer_norm", False):
            what += " (direction only: ln_final scales it per input)"
        return W_out.float() @ W_U.float(), what
    if family == "mlp":
        if W_U is None:
            return None, "W_L: the parameters hold no unembed.W_U"
        return W_U.float(), f"W_L = unembed.W_U (the last hidden layer, {cfg.n_hidden_layers - 1}, feeds the logits directly)"
    return None, f"W_L: no neuron-to-logit map is defined for the {family} family"


def model_tokens(cfg: Any) -> Tensor:
    """The grid's inputs as the model reads them: ``[a, b, =]`` (:func:`grid_tokens`), or ``[a, b]`` in
    Zhong et al.'s layout (``n_ctx = 2``)."""
    return grid_tokens(cfg.p)[:, : min(3, int(cfg.n_ctx))]


def _final(x: Tensor) -> Tensor:
    """Activations at the readout: ``[batch, pos, k]`` -> the last position; ``[batch, k]`` as is."""
    return x[:, -1] if x.ndim == 3 else x


def generic_grid_forward(
    params: dict[str, Tensor],
    cfg: Any,
    *,
    post_fn: PostFn | None = None,
    return_post: bool = False,
    rows: tuple[int, int] | None = None,
    hooks: Sequence[tuple[str, Callable]] = (),
    return_pattern: bool = False,
) -> GridOutput:
    """:func:`grid_forward` for any family: the family's hooked module on every input of the grid.

    One checkpoint at a time (``params`` single or stacked ``[ckpt, ...]``); the neurons are the family's
    ``hidden_hook`` at the readout position, and ``post_fn`` replaces them there (through a hook) before
    the rest of the model reads them. Equal to :func:`grid_forward` on a one-layer transformer up to
    float32 rounding (tested). ``hooks``: further TransformerLens forward hooks ``(name, fn)`` (each sees the
    whole grid of one checkpoint, or the block of ``rows``; the head ablations use ``blocks.L.attn.hook_z``).
    ``return_pattern``: a transformer's attention of the readout position in its **last** block
    (``blocks.L.attn.hook_pattern``), ``[ckpt, a, b, h, key_pos]``; a family without attention has none
    (:class:`AnalysisError`). Head scaling is the table fold's (the head ablations hook ``hook_z`` instead).
    """
    from .families import family_of

    fam = family_of(cfg)
    first = next(iter(params.values()))
    shapes = fam.param_shapes(cfg)
    name0 = next(iter(shapes))
    single = params[name0].ndim == len(shapes[name0])
    P = {k: (v.unsqueeze(0) if single else v) for k, v in params.items()}
    n = P[name0].shape[0]
    p = cfg.p
    a0, a1 = (0, p) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= a0 < a1 <= p:
        raise AnalysisError(f"rows: expected 0 ≤ start < stop ≤ {p}, got {rows!r}")
    A = a1 - a0
    tokens = model_tokens(cfg)[a0 * p: a1 * p].to(first.device)
    model = fam.hooked(cfg, init=False).to(first.device)
    hook = fam.hidden_hook(cfg)
    logits, posts, patterns = [], [], []
    seen: list[Tensor] = []
    attn: list[Tensor] = []
    if return_pattern and getattr(cfg, "family", "transformer") != "transformer":
        raise AnalysisError(f"the attention pattern: undefined for the {cfg.family} family (it has no attention)")

    def at_pattern(x: Tensor, hook=None) -> Tensor:  # noqa: ARG001  x [batch, h, query, key]
        attn.append(x[:, :, -1].detach())
        return x

    def at_neurons(x: Tensor, hook=None) -> Tensor:  # noqa: ARG001  (TransformerLens' hook signature)
        if post_fn is not None:
            x = x.clone()
            last = _final(x)
            new = post_fn(last.reshape(1, A, p, -1)).reshape(last.shape).to(x.dtype)
            if x.ndim == 3:
                x[:, -1] = new
            else:
                x = new
        seen.append(_final(x).detach())
        return x

    for i in range(n):
        model.load_params({k: v[i].float() for k, v in P.items()})
        seen.clear()
        with torch.no_grad():
            fwd = ([(hook, at_neurons)] if (post_fn or return_post) else []) + list(hooks)
            if return_pattern:
                attn.clear()
                fwd.append((f"blocks.{cfg.n_layers - 1}.attn.hook_pattern", at_pattern))
            out = model.run_with_hooks(tokens, fwd_hooks=fwd) if fwd else model(tokens)
        logits.append(out[:, -1].float().reshape(A, p, -1))
        if return_post:
            posts.append(seen[0].float().reshape(A, p, -1))
        if return_pattern:
            patterns.append(attn[0].float().reshape(A, p, *attn[0].shape[1:]))
    L = torch.stack(logits)
    post = torch.stack(posts) if return_post else None
    pattern = torch.stack(patterns) if return_pattern else None
    if single:
        L = L[0]
        post = post[0] if post is not None else None
        pattern = pattern[0] if pattern is not None else None
    return GridOutput(L, post, pattern)


def grid_outputs(
    params: dict[str, Tensor],
    cfg: Any,
    *,
    head_scale: Tensor | None = None,
    post_fn: PostFn | None = None,
    return_post: bool = False,
    return_pattern: bool = False,
    rows: tuple[int, int] | None = None,
) -> GridOutput:
    """The grid of any model: :func:`grid_forward` (the table fold) where it applies, else
    :func:`generic_grid_forward` (a transformer's pattern: its last block's). Head scaling needs the fold, and a
    family without attention has no pattern: asked of another model, an :class:`AnalysisError` says why."""
    reason = fold_unsupported(cfg)
    if reason is None:
        return grid_forward(params, cfg, head_scale=head_scale, post_fn=post_fn, return_post=return_post,
                            return_pattern=return_pattern, rows=rows)
    if head_scale is not None:
        if getattr(cfg, "family", "transformer") != "transformer":
            raise AnalysisError(f"head ablation: undefined for the {cfg.family} family (it has no attention heads)")
        raise AnalysisError(f"head_scale: the one-layer table fold's only ({reason}); ablate heads at "
                            f"blocks.L.attn.hook_z (analysis.ablations.ablate_heads)")
    return generic_grid_forward(params, cfg, post_fn=post_fn, return_post=return_post, rows=rows,
                                return_pattern=return_pattern)
