"""Final-position logits of a one-layer model, computed from per-(position, token) tables.

The loss of an ``[a, b, =]`` task needs only the logits at the last position. In a one-layer
model the keys and values of a position depend only on that position's token, so everything the
last position reads is a table indexed by ``(position, token)``:

* the query is that of the ``=`` token (the same for every example), so the attention score of
  key position ``j`` is a table ``S[j, token, head]``;
* value → ``W_O`` → (``W_in`` | ``W_U``) folds into ``T[j, token, head, d_mlp + vocab]``: what one
  head, attending fully to ``token`` at position ``j``, adds to the MLP pre-activations and to
  the direct-path logits;
* per example, the MLP input is the attention-weighted sum of a handful of rows of ``T``: an
  ``embedding_bag`` whose backward we compute with a transposed bag (table gradient) and a
  sampled dense-dense product (attention-weight gradient) over a sparsity pattern built once;
* the unembedding of the MLP goes through ``W_L = W_out @ W_U`` (``[d_mlp, vocab]``).

So a training step costs about one ``[batch, d_mlp] @ [d_mlp, vocab]`` product forward and two
backward, instead of the full model at every position. :func:`final_logits` equals
``model(tokens)[:, -1]`` up to float32 rounding (tested to 1e-5).

Example:
    >>> plan = FastPlan.build(model.cfg, tokens)                       # doctest: +SKIP
    >>> logits = final_logits(dict(model.named_parameters()), plan)    # [batch, vocab]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig
from . import tables
from .families.transformer import fast_kernels_apply

__all__ = ["FastPlan", "BagIndex", "bag_sum", "final_logits", "fast_path_unsupported"]


def fast_path_unsupported(cfg: ModelConfig, tokens: Tensor) -> str | None:
    """Why the table fast path cannot run on ``tokens`` (``None`` when it can): the model is not one
    the kernels fold (:func:`~grokinterp.model.families.transformer.fast_kernels_apply`: more than one
    layer, LayerNorm, other biases, the ``a_b`` layout), or the tokens do not fit it."""
    reason = fast_kernels_apply(cfg)
    if reason:
        return reason
    if tokens.ndim != 2 or tokens.shape[1] != cfg.n_ctx or tokens.shape[0] == 0:
        return f"tokens must be [batch ≥ 1, {cfg.n_ctx}], got {list(tokens.shape)}"
    if not bool((tokens[:, -1] == tokens[0, -1]).all()):
        return "the last token must be the same for every example"
    return None


class _Bag(torch.autograd.Function):
    """``out[b] = Σ_i w[b, i] · table[idx[b, i]]`` with a backward built for a fixed ``idx``
    (``plan``: a :class:`BagIndex` or a :class:`FastPlan`, which carries the same fields)."""

    @staticmethod
    def forward(ctx, w: Tensor, table: Tensor, plan: "BagIndex | FastPlan") -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(w, table)
        ctx.plan = plan
        return F.embedding_bag(plan.bag_idx, table, per_sample_weights=w, mode="sum")

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        w, table = ctx.saved_tensors
        plan = ctx.plan
        grad = grad.contiguous()
        grad_w = grad_table = None
        if ctx.needs_input_grad[1]:
            # table row r collects Σ w[b, i] grad[b] over the (b, i) that point at r:
            # the same bag, transposed (built once per token set).
            grad_table = F.embedding_bag(
                plan.t_rows, grad, plan.t_offsets, per_sample_weights=w.reshape(-1)[plan.t_perm],
                mode="sum", include_last_offset=True,
            )
        if ctx.needs_input_grad[0]:
            # grad_w[b, i] = grad[b] · table[idx[b, i]]: a sampled dense-dense product.
            grad_w = torch.sparse.sampled_addmm(plan.pattern, grad, table.t(), beta=0.0)
            grad_w = grad_w.values().view_as(w)
        return grad_w, grad_table, None


@dataclass(eq=False)
class BagIndex:
    """A bag's fixed indices and what its hand-written backward needs, built once per index set.

    ``bag_idx[b]`` lists the table entries summed into bag ``b`` (:func:`bag_sum`); the transposed
    bag (``t_rows``, ``t_offsets``, ``t_perm``: for each table entry, the bags that read it) gives the
    table gradient, and the CSR ``pattern`` the weight gradient as a sampled dense-dense product.
    """

    bag_idx: Tensor  # [bags, k] table entries of each bag
    t_rows: Tensor  # transposed bag: bag of each (bag, slot), sorted by table entry
    t_offsets: Tensor  # [entries + 1] CSR offsets of the transposed bag
    t_perm: Tensor  # order of the flattened bag slots in the transposed bag
    pattern: Tensor  # sparse CSR [bags, entries] with the bag's sparsity

    @classmethod
    def build(cls, bag_idx: Tensor, entries: int) -> "BagIndex":
        """Index structures for bags ``bag_idx`` ``[bags, k]`` (int64) over a table of ``entries`` rows."""
        bag_idx = bag_idx.contiguous()
        n, k = bag_idx.shape
        dev = bag_idx.device
        flat = bag_idx.reshape(-1)
        t_perm = torch.argsort(flat, stable=True)
        t_rows = torch.div(t_perm, max(k, 1), rounding_mode="floor")
        t_offsets = torch.zeros(entries + 1, dtype=torch.long, device=dev)
        t_offsets[1:] = torch.cumsum(torch.bincount(flat, minlength=entries), 0)
        crow = (torch.arange(n + 1, device=dev) * k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(crow, flat, torch.zeros(n * k, device=dev), size=(n, entries))
        return cls(bag_idx, t_rows, t_offsets, t_perm, pattern)


def bag_sum(w: Tensor, table: Tensor, index: BagIndex) -> Tensor:
    """``out[b] = Σ_i w[b, i] · table[index.bag_idx[b, i]]`` ``[bags, d]``, differentiable in ``w`` and ``table``.

    Args:
        w: ``[bags, k]`` weights.
        table: ``[entries, d]``.
        index: :class:`BagIndex` of the fixed indices.
    """
    return _Bag.apply(w, table, index)


@dataclass(eq=False)
class FastPlan:
    """Index structures for :func:`final_logits` on one fixed set of token sequences.

    Built once per token set (the training set, the test set, the full grid) and reused every
    step. The tables are built only for the ``(position, token)`` pairs that occur (``rows``);
    ``vary`` are the positions whose token differs between examples (``a`` and ``b``), gathered
    through the bag; the others hold one token each (``=``) and are handled densely.
    """

    cfg: ModelConfig
    n_examples: int
    vary: tuple[int, ...]
    const_rows: tuple[int, ...]  # table row of each constant position, in position order
    row_pos: Tensor  # [rows] position of each table row
    row_tok: Tensor  # [rows] token of each table row
    row_idx: Tensor  # [batch, len(vary)] table row of each example's token at each varying position
    bag_idx: Tensor  # [batch, len(vary) * n_heads (+1)] entries (row * n_heads + head) of the value table
    t_rows: Tensor  # transposed bag: example indices sorted by table entry
    t_offsets: Tensor  # [entries + 1] CSR offsets of the transposed bag
    t_perm: Tensor  # order of the flattened bag entries in the transposed bag
    pattern: Tensor  # sparse CSR [batch, entries] with the bag's sparsity
    vary_idx: Tensor  # the varying positions as an index tensor on the plan's device
    const_pos_idx: Tensor  # the constant positions, likewise
    const_rows_idx: Tensor  # their table rows, likewise (Python lists as indices would copy
    #                         host → device, and wait for the GPU, at every step)

    @classmethod
    def build(cls, cfg: ModelConfig, tokens: Tensor) -> "FastPlan":
        reason = fast_path_unsupported(cfg, tokens)
        if reason:
            raise ValueError(reason)
        tokens = tokens.long()
        dev = tokens.device
        n, n_ctx, H, V = tokens.shape[0], cfg.n_ctx, cfg.n_heads, cfg.d_vocab
        const = [j for j in range(n_ctx) if bool((tokens[:, j] == tokens[0, j]).all())]
        vary = tuple(j for j in range(n_ctx) if j not in const)
        # Table rows: every (position, token) that occurs, as compact ids.
        key = torch.arange(n_ctx, device=dev) * V + tokens  # [n, pos]
        used, inverse = torch.unique(key, return_inverse=True)  # sorted: position-major
        row_pos, row_tok = used // V, used % V
        const_rows = tuple(int(inverse[0, j]) for j in const)
        row_idx = inverse[:, list(vary)].contiguous()
        heads = torch.arange(H, device=dev)
        bag_idx = (row_idx[:, :, None] * H + heads).reshape(n, -1)
        entries = len(used) * H
        if len(const) == 1 and vary:  # the folded constant is one extra table entry (see final_logits)
            bag_idx = torch.cat([bag_idx, torch.full((n, 1), entries, dtype=torch.long, device=dev)], dim=1)
            entries += 1
        bag = BagIndex.build(bag_idx, entries)
        as_idx = lambda xs: torch.tensor(list(xs), dtype=torch.long, device=dev)  # noqa: E731
        return cls(cfg, n, vary, const_rows, row_pos, row_tok, row_idx, bag.bag_idx, bag.t_rows, bag.t_offsets,
                   bag.t_perm, bag.pattern, as_idx(vary), as_idx(const), as_idx(const_rows))

    def to(self, device: torch.device | str) -> "FastPlan":
        """The same plan with its tensors on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in ("row_pos", "row_tok", "row_idx", "bag_idx", "t_rows", "t_offsets", "t_perm", "pattern",
                         "vary_idx", "const_pos_idx", "const_rows_idx")
        }
        return FastPlan(self.cfg, self.n_examples, self.vary, self.const_rows, **moved)


def final_logits(params: dict[str, Tensor], plan: FastPlan) -> Tensor:
    """Logits at the last position ``[batch, d_vocab_out]`` from the parameter dict.

    Args:
        params: TransformerLens-named parameters of a one-layer model (``model.named_parameters()``).
        plan: :class:`FastPlan` of the token set.

    Notes:
        With ``EP[j, t] = W_E[t] + W_pos[j]``, query ``q_h = EP[last, =] W_Q[h]``, scores
        ``S[j, t, h] = EP[j, t] · (W_K[h] q_h) / sqrt(d_head)`` and
        ``T[j, t, h] = EP[j, t] W_V[h] W_O[h] [W_in | W_U]``:
        ``[pre | direct] = c + Σ_{j,h} softmax_j(S)[j, h] T[j, tok_j, h]`` with the constant
        ``c = EP[last, =][W_in | W_U] + [b_in | b_out W_U]``, and
        ``logits = direct + act(pre) W_out W_U``. Constant positions and ``c`` enter through one
        small matrix product; the varying positions through the bag. With an attention
        coefficient ``a < 1`` (``cfg.attn_coeff``) ``softmax_j(S)`` becomes
        ``a · softmax_j(S) + (1 − a)``, whose sum over the ``n`` positions is ``a + n (1 − a)``.
    """
    cfg = plan.cfg
    H, dm = cfg.n_heads, cfg.d_mlp
    n = plan.n_examples
    W_E, W_pos = params["embed.W_E"], params["pos_embed.W_pos"]
    W_Q, W_K = params["blocks.0.attn.W_Q"], params["blocks.0.attn.W_K"]
    W_V, W_O = params["blocks.0.attn.W_V"], params["blocks.0.attn.W_O"]
    W_in, b_in = params["blocks.0.mlp.W_in"], params["blocks.0.mlp.b_in"]
    W_out, b_out = params["blocks.0.mlp.W_out"], params["blocks.0.mlp.b_out"]
    W_U = params["unembed.W_U"]

    EP = W_E[plan.row_tok] + W_pos[plan.row_pos]  # [rows, d_model]
    x_last = EP[plan.const_rows[-1]]  # the query token (constant at the last position)
    S = EP @ tables.query_key_map(x_last, W_Q, W_K)  # [rows, head]
    n_pos = len(plan.vary) + len(plan.const_rows)
    scores = [None] * n_pos
    for i, j in enumerate(plan.vary):
        # index_select's backward (index_add) is fastest on CPU; embedding's is deterministic on CUDA
        idx = plan.row_idx[:, i]
        scores[j] = F.embedding(idx, S) if S.is_cuda else S.index_select(0, idx)  # [batch, head]
    const_pos = [j for j in range(n_pos) if j not in plan.vary]
    for j, r in zip(const_pos, plan.const_rows):
        scores[j] = S[r].expand(n, H)
    pattern = torch.stack(scores, dim=1).softmax(dim=1)  # [batch, pos, head]
    a = float(cfg.attn_coeff)
    if a != 1.0:  # attention coefficient (Zhong et al.): every weight a·softmax + (1 − a)
        pattern = pattern * a + (1.0 - a)
    total = a + n_pos * (1.0 - a)  # Σ_j of the weights of one head (1 for softmax attention)

    W_read = tables.read_weights(W_in, W_U)  # [d_model, d_mlp + vocab]
    T = tables.value_table(EP, W_V, tables.ov_read(W_O, W_read))  # [rows, head, k]
    c = tables.constant_read(x_last, W_read, b_in, b_out, W_U)  # [k]
    k = T.shape[-1]
    if plan.vary and len(plan.const_rows) == 1:
        # One constant position (the '=' query): its weights are total − Σ_vary pattern, so its
        # rows fold into the varying rows (T − T_=) and the constant (c + total · Σ_h T_=), and the
        # constant enters the bag as one more entry of weight 1: the whole sum is a single bag.
        T_eq = T[plan.const_rows[0]]  # [head, k]
        T_eq_sum = T_eq.sum(0) if total == 1.0 else T_eq.sum(0) * total
        table = torch.cat([(T - T_eq).reshape(-1, k), (c + T_eq_sum)[None]], dim=0)
        w = torch.cat([pattern.index_select(1, plan.vary_idx).reshape(n, -1), pattern.new_ones(n, 1)], dim=1)
        out = _Bag.apply(w, table, plan)
    else:
        # General case: constant positions and c in one product [pattern_const | 1] @ [T_const; c].
        A_const = torch.cat([pattern.index_select(1, plan.const_pos_idx).reshape(n, -1), pattern.new_ones(n, 1)],
                            dim=1)
        T_const = torch.cat([T.index_select(0, plan.const_rows_idx).reshape(-1, k), c[None]], dim=0)
        out = A_const @ T_const
        if plan.vary:
            w = pattern.index_select(1, plan.vary_idx).reshape(n, -1)
            out = out + _Bag.apply(w, T.reshape(-1, k), plan)
    pre, direct = out.split([dm, out.shape[1] - dm], dim=1)
    post = torch.relu(pre) if cfg.act_fn == "relu" else F.gelu(pre)
    return torch.addmm(direct, post, W_out @ W_U)
