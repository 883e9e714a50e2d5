"""Final-position logits of ``R`` same-shape one-layer models at once, each on its own examples.

Parameters are stacked along a leading ``run`` axis (``embed.W_E [run, d_vocab, d_model]``, ...),
and each run reads its own token set (``[run, batch, pos]``; runs with fewer examples are padded
and the padding weighted out by the caller). Two implementations give the same logits:

* ``tables`` (the CPU default) — the fold of :mod:`~grokinterp.model.fastpath` done for every run
  at once: score and value tables per ``(position, token)`` (:mod:`~grokinterp.model.tables`), the
  value → ``W_O`` → ``[W_in | W_U]`` chain folded into one table ``T``, and each example's MLP input
  and direct logits one :func:`~grokinterp.model.fastpath.bag_sum` over ``R · batch`` bags. A step
  costs about what ``R`` single fast-path steps cost in arithmetic, without their ``R`` × Python and
  launch overhead.
* ``dense`` (the CUDA default) — the plain final-position forward as batched matrix products
  (keys and values gathered per example from per-token tables, then ``W_O``, the MLP and ``W_U``).
  About 2.5× the arithmetic of ``tables``, but every operation is a dense batched product, which
  is what a GPU does best; no sparse kernels.

Both equal ``HookedGrokTransformer(cfg_r)(tokens[r])[:, -1]`` for every run ``r`` up to float32
rounding (tested to 1e-5).

Example:
    >>> plan = StackPlan.build(cfg, tokens)                     # tokens [run, batch, 3]   # doctest: +SKIP
    >>> logits = stacked_final_logits(params, plan)              # [run, batch, d_vocab_out]  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig
from . import tables
from .fastpath import BagIndex, bag_sum
from .params import init_params

__all__ = ["StackPlan", "stacked_final_logits", "stack_params", "IMPLS", "stack_unsupported"]

#: The implementations of :func:`stacked_final_logits`.
IMPLS = ("tables", "dense")
_NAMES = ("embed.W_E", "pos_embed.W_pos", *(f"blocks.0.attn.{n}" for n in ("W_Q", "W_K", "W_V", "W_O")),
          *(f"blocks.0.mlp.{n}" for n in ("W_in", "b_in", "W_out", "b_out")), "unembed.W_U")


def stack_unsupported(cfg: ModelConfig) -> str | None:
    """Why models of ``cfg`` cannot be trained stacked (``None`` when they can)."""
    if cfg.n_layers != 1:
        return f"stacked training needs n_layers = 1 (got {cfg.n_layers})"
    return None


def stack_params(configs: list[ModelConfig]) -> dict[str, Tensor]:
    """Each run's initial parameters (:func:`~grokinterp.model.params.init_params`, seeded by its
    own ``init_seed``), stacked ``{name: [run, ...]}`` (CPU, float32)."""
    per_run = [init_params(c) for c in configs]
    return {name: torch.stack([p[name] for p in per_run]) for name in per_run[0]}


@dataclass(eq=False)
class StackPlan:
    """Index structures for :func:`stacked_final_logits` on one token set per run, built once.

    Attributes:
        cfg: the shared model shape (``init_seed`` is irrelevant here).
        n_runs, n_examples: ``R`` and the (padded) examples per run.
        rows: ``[run, batch, pos]`` row of each example's token in the flattened per-(run,
            position, token) tables: ``(r · n_ctx + j) · d_vocab + token``.
        eq_rows: ``[run]`` row of each run's query token (the last position, the same for every
            example of a run).
        bag: the :class:`~grokinterp.model.fastpath.BagIndex` of the ``tables`` implementation:
            bag ``(r, i)`` reads, per position ``j`` and head ``h``, the value-table row
            ``(r · n_heads + h) · ((n_ctx − 1) · d_vocab + 1) + j · d_vocab + token`` (the query, at the
            last position, has the last row of each head).
    """

    cfg: ModelConfig
    n_runs: int
    n_examples: int
    rows: Tensor
    eq_rows: Tensor
    bag: BagIndex | None

    @classmethod
    def build(cls, cfg: ModelConfig, tokens: Tensor, *, impl: str = "tables") -> "StackPlan":
        """Args:
            cfg: the shared model config.
            tokens: ``[run, batch, n_ctx]`` int64; within a run the last token must be constant.
            impl: ``tables`` (builds the bag) or ``dense``.
        """
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        reason = stack_unsupported(cfg)
        if reason:
            raise ValueError(reason)
        if tokens.ndim != 3 or tokens.shape[2] != cfg.n_ctx or tokens.shape[1] == 0:
            raise ValueError(f"tokens must be [run, batch ≥ 1, {cfg.n_ctx}], got {list(tokens.shape)}")
        tokens = tokens.long()
        R, n, n_ctx = tokens.shape
        V, H = cfg.d_vocab, cfg.n_heads
        if not bool((tokens[:, :, -1] == tokens[:, :1, -1]).all()):
            raise ValueError("the last token must be the same for every example of a run")
        if bool((tokens < 0).any()) or bool((tokens >= V).any()):
            raise ValueError(f"tokens must lie in [0, {V})")
        dev = tokens.device
        base = (torch.arange(R, device=dev)[:, None] * n_ctx + torch.arange(n_ctx, device=dev)) * V  # [R, pos]
        rows = (base[:, None, :] + tokens).contiguous()  # [R, n, pos]
        eq_rows = rows[:, 0, -1].contiguous()
        bag = None
        if impl == "tables":  # value-table rows laid out [run, head, key position · token (+ the query)]
            nv = n_ctx - 1
            per = nv * V + 1
            run_head = torch.arange(R, device=dev)[:, None] * H + torch.arange(H, device=dev)  # [R, H]
            key_row = torch.cat([torch.arange(nv, device=dev) * V + tokens[:, :, :-1],
                                 torch.full((R, n, 1), nv * V, dtype=torch.long, device=dev)], dim=2)  # [R, n, pos]
            idx = run_head[:, None, None, :] * per + key_row[..., None]  # [R, n, pos, H]
            bag = BagIndex.build(idx.reshape(R * n, n_ctx * H), R * H * per)
        return cls(cfg, R, n, rows, eq_rows, bag)


def _gather_rows(table: Tensor, idx: Tensor) -> Tensor:
    # index_select's backward (index_add) is fastest on CPU; embedding's is deterministic on CUDA
    return F.embedding(idx, table) if table.is_cuda else table.index_select(0, idx.reshape(-1)).view(*idx.shape, -1)


def stacked_final_logits(params: dict[str, Tensor], plan: StackPlan, impl: str = "tables") -> Tensor:
    """Logits at the last position of every run, ``[run, batch, d_vocab_out]``.

    Args:
        params: TransformerLens-named parameters stacked ``[run, ...]``.
        plan: the :class:`StackPlan` of the token sets (built for ``impl``).
        impl: ``tables`` or ``dense`` (module notes).

    Notes:
        Per run, with ``EP[j, t] = W_E[t] + W_pos[j]``, the query ``x_q = EP[last, =]`` and
        attention ``A = softmax_j(EP[j, tok_j] · kq)``: ``tables`` computes
        ``[pre | direct] = Σ_{j, h} A[j, h] (T[h, j, tok_j] + c / n_heads)`` (``Σ_j A[j, h] = 1``) with
        ``T[h, j, t] = EP[j, t] W_V[h] W_O[h] [W_in | W_U]`` and ``c = x_q [W_in | W_U] + [b_in | b_out W_U]``,
        then ``logits = direct + act(pre) W_out W_U``; ``dense`` computes
        ``z_h = Σ_j A[j, h] EP[j, tok_j] W_V[h]``, ``x = x_q + Σ_h z_h W_O[h]`` and
        ``logits = (x + act(x W_in + b_in) W_out + b_out) W_U``.
    """
    cfg = plan.cfg
    R, n = plan.n_runs, plan.n_examples
    H, dm, n_ctx, V = cfg.n_heads, cfg.d_mlp, cfg.n_ctx, cfg.d_vocab
    W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_out, b_out, W_U = (params[k] for k in _NAMES)
    d = W_E.shape[-1]

    EP = (W_E[:, None] + W_pos[:, :n_ctx, None]).reshape(R, n_ctx * V, d)  # [run, pos·vocab, d_model]
    x_q = _gather_rows(EP.reshape(R * n_ctx * V, d), plan.eq_rows)  # [run, d_model]
    kq = tables.query_key_map(x_q, W_Q, W_K)  # [run, d_model, head]
    S = torch.bmm(EP, kq)  # [run, pos·vocab, head]
    scores = _gather_rows(S.reshape(R * n_ctx * V, H), plan.rows)  # [run, batch, pos, head]
    pattern = scores.softmax(dim=2)
    if impl == "tables":
        if plan.bag is None:
            raise ValueError("this StackPlan was built for impl='dense'")
        nv = n_ctx - 1
        # value rows of the key positions' tokens and of the query, each head's output read by the
        # MLP input and by the unembedding (two tables: pre-activations and direct logits stay
        # contiguous), plus the constant c / n_heads on every row: the attention weights of a head
        # sum to 1, so the bag adds c exactly once.
        vals = torch.matmul(torch.cat([EP[:, : nv * V], x_q[:, None]], dim=1)[:, None], W_V)  # [run, head, rows, d_head]
        c_pre = torch.baddbmm(b_in[:, None], x_q[:, None], W_in)  # [run, 1, d_mlp]
        c_dir = torch.bmm((x_q + b_out)[:, None], W_U)  # [run, 1, vocab]
        T_pre = torch.matmul(vals, tables.ov_read(W_O, W_in)) + (c_pre / H)[:, None]  # [run, head, rows, d_mlp]
        T_dir = torch.matmul(vals, tables.ov_read(W_O, W_U)) + (c_dir / H)[:, None]  # [run, head, rows, vocab]
        w = pattern.reshape(R * n, n_ctx * H)
        pre = bag_sum(w, T_pre.reshape(-1, dm), plan.bag).view(R, n, dm)
        direct = bag_sum(w, T_dir.reshape(-1, T_dir.shape[-1]), plan.bag).view(R, n, -1)
        post = pre.relu_() if cfg.act_fn == "relu" else F.gelu(pre)  # in place: nothing else reads pre
        return torch.baddbmm(direct, post, W_out @ W_U)
    if impl != "dense":
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    e = W_V.shape[-1]
    Wv = W_V.permute(0, 2, 1, 3).reshape(R, d, H * e)
    vals = _gather_rows(torch.bmm(EP, Wv).reshape(R * n_ctx * V, H * e), plan.rows).view(R, n, n_ctx, H, e)
    z = (pattern[..., None] * vals).sum(2)  # [run, batch, head, d_head]
    x = torch.baddbmm(x_q[:, None], z.reshape(R, n, H * e), W_O.reshape(R, H * e, d))  # [run, batch, d_model]
    pre = torch.baddbmm(b_in[:, None], x, W_in)
    post = torch.relu(pre) if cfg.act_fn == "relu" else F.gelu(pre)
    x = x + torch.baddbmm(b_out[:, None], post, W_out)
    return torch.bmm(x, W_U)
