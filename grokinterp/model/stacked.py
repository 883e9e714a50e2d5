"""Final-position logits of ``R`` same-shape one-layer models at once, each on its own examples.

Parameters are stacked along a leading ``run`` axis (``embed.W_E [run, d_vocab, d_model]``, ...),
and each run reads its own token set (``[run, batch, pos]``; runs with fewer examples are padded
and the padding weighted out by the caller). Two implementations give the same logits:

* ``tables`` (the CPU default) — the fold of :mod:`~grokinterp.model.fastpath` done for every run
  at once: score and value tables per ``(position, token)`` (:mod:`~grokinterp.model.tables`), the
  value → ``W_O`` → ``[W_in | W_U]`` chain folded into one table ``T``, and each example's MLP input
  and direct logits one :func:`~grokinterp.model.fastpath.bag_sum` over ``R · batch`` bags. A step
  costs about what ``R`` single fast-path steps cost in arithmetic, without their ``R`` × Python and
  launch overhead. For training, :func:`stacked_losses` computes the per-run losses with their
  gradients a few runs at a time, so that each chunk's activations stay in the CPU cache.
* ``dense`` (the CUDA default) — the plain final-position forward as batched matrix products
  (keys and values gathered per example from per-token tables, then ``W_O``, the MLP and ``W_U``).
  About 2.5× the arithmetic of ``tables``, but every operation is a dense batched product, which
  is what a GPU does best; no sparse kernels.

Both equal ``HookedGrokTransformer(cfg_r)(tokens[r])[:, -1]`` for every run ``r`` up to float32
rounding (tested to 1e-5).

* ``generic`` (issue 19) — the model family's functional forward over stacked parameters (the
  family's ``forward``: for the transformer :func:`grokinterp.model.families.transformer.forward`, any
  number of layers, LayerNorm, biases, the ``a_b`` layout; the MLP's batched products); the plan only
  holds the tokens. The one choice for a model the two kernels cannot compute
  (:func:`stack_unsupported`, :func:`stack_impls`).

Example:
    >>> plan = StackPlan.build(cfg, tokens)                     # tokens [run, batch, 3]   # doctest: +SKIP
    >>> logits = stacked_final_logits(params, plan)              # [run, batch, d_vocab_out]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig
from . import tables
from .families import family_of, get_family
from .families.transformer import fast_kernels_apply
from .fastpath import BagIndex, bag_sum

__all__ = ["StackPlan", "stacked_final_logits", "stacked_losses", "stack_params", "IMPLS", "stack_unsupported",
           "CHUNK_ELEMENTS", "stack_impls"]

#: The implementations of :func:`stacked_final_logits`.
IMPLS = ("tables", "dense", "generic")
_NAMES = ("embed.W_E", "pos_embed.W_pos", *(f"blocks.0.attn.{n}" for n in ("W_Q", "W_K", "W_V", "W_O")),
          *(f"blocks.0.mlp.{n}" for n in ("W_in", "b_in", "W_out", "b_out")), "unembed.W_U")


def stack_unsupported(cfg: ModelConfig) -> str | None:
    """Why the one-layer kernels (``tables``, ``dense``) cannot compute models of ``cfg`` (``None``
    when they can): :func:`~grokinterp.model.families.transformer.fast_kernels_apply`. Such models
    train in stacks through ``generic`` (:func:`stack_impls`)."""
    return fast_kernels_apply(cfg)


def stack_impls(cfg: ModelConfig) -> tuple[str, ...]:
    """The implementations of :func:`stacked_final_logits` that compute models of ``cfg``: all three
    where the one-layer kernels apply, else ``generic`` only."""
    return ("generic",) if stack_unsupported(cfg) else IMPLS


def stack_params(configs: list[ModelConfig]) -> dict[str, Tensor]:
    """Each run's initial parameters (its family's ``init_params``, seeded by its own ``init_seed``),
    stacked ``{name: [run, ...]}`` (CPU, float32)."""
    per_run = [family_of(c).init_params(c) for c in configs]
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
            bag ``(r, i)`` reads, per key position ``j < n_ctx − 1`` and head ``h``, the value-table row
            ``(r · n_heads + h) · ((n_ctx − 1) · d_vocab + 1) + j · d_vocab + token``. The query (the
            last position) has the last row of each head; the bag does not read it (the fold in
            :func:`stacked_final_logits`).
        attn: each run's attention coefficient ``a`` (Zhong et al. 2023; ``ModelConfig.attn_coeff``) as
            ``(a, 1 − a, total)`` float32 ``[run]`` tensors, ``total = a + n_ctx (1 − a)`` the sum of a
            head's weights; ``None`` when every run has ``a = 1`` (softmax attention).
    """

    cfg: ModelConfig
    n_runs: int
    n_examples: int
    rows: Tensor
    eq_rows: Tensor
    bag: BagIndex | None
    chunks: tuple["_Chunk", ...] = ()
    attn: tuple[Tensor, Tensor, Tensor] | None = None  # tables, dense
    tokens: Tensor | None = None  # generic: [run, batch, n_ctx]
    attn_coeff: Tensor | None = None  # generic: each run's attention coefficient [run] (None: cfg's)

    @classmethod
    def build(cls, cfg: ModelConfig, tokens: Tensor, *, impl: str = "tables",
              attn_coeff: Sequence[float] | None = None) -> "StackPlan":
        """Args:
            cfg: the shared model config (its ``attn_coeff`` unless ``attn_coeff`` is given).
            tokens: ``[run, batch, n_ctx]`` int64; within a run the last token must be constant
                (``tables``, ``dense``).
            impl: ``tables`` (builds the bag), ``dense`` or ``generic`` (any model: the tokens only).
            attn_coeff: each run's attention coefficient (default: ``cfg.attn_coeff`` for every run).
        """
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if impl == "generic":
            if tokens.ndim != 3 or tokens.shape[1] == 0 or tokens.shape[2] != cfg.n_ctx:
                raise ValueError(f"tokens must be [run, batch ≥ 1, {cfg.n_ctx}], got {list(tokens.shape)}")
            if not (getattr(cfg, "d_input", 0) and tokens.is_floating_point()):  # input vectors stay float
                tokens = tokens.long()
            R, n = tokens.shape[:2]
            a = None
            if attn_coeff is not None:
                if len(attn_coeff) != R:
                    raise ValueError(f"attn_coeff needs one value per run ({R}), got {len(attn_coeff)}")
                a = torch.tensor([float(x) for x in attn_coeff], dtype=torch.float32, device=tokens.device)
            empty = tokens.new_zeros(0)
            return cls(cfg, R, n, empty, empty, None, tokens=tokens, attn_coeff=a)
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
        a = [float(cfg.attn_coeff)] * R if attn_coeff is None else [float(x) for x in attn_coeff]
        if len(a) != R:
            raise ValueError(f"attn_coeff needs one value per run ({R}), got {len(a)}")
        attn = None
        if any(x != 1.0 for x in a):  # rounded from float64 once, as the single run's Python floats
            attn = tuple(torch.tensor(v, dtype=torch.float32, device=dev)
                         for v in (a, [1.0 - x for x in a], [x + n_ctx * (1.0 - x) for x in a]))
        bag = None
        if impl == "tables":  # value-table rows laid out [run, head, key position · token (+ the query)]
            nv = n_ctx - 1
            per = nv * V + 1
            run_head = torch.arange(R, device=dev)[:, None] * H + torch.arange(H, device=dev)  # [R, H]
            key_row = torch.arange(nv, device=dev) * V + tokens[:, :, :-1]  # [R, n, key position]
            idx = run_head[:, None, None, :] * per + key_row[..., None]  # [R, n, key position, H]
            bag = BagIndex.build(idx.reshape(R * n, nv * H), R * H * per)
            return cls(cfg, R, n, rows, eq_rows, bag, _chunks(bag, R, n, H * per, cfg.d_mlp + _padded(cfg.d_vocab_out)),
                       attn)
        return cls(cfg, R, n, rows, eq_rows, bag, (), attn)


#: Elements of one chunk's ``[examples, d_mlp + vocab]`` activations in :func:`stacked_losses`: runs
#: are processed a few at a time so that what a chunk's forward writes is still in the CPU cache when
#: its backward reads it (a whole stack's activations are several MB and every pass over them then
#: runs at memory speed). A constant, so that a stack's chunks, and its rounding, never change.
CHUNK_ELEMENTS = 1 << 18


@dataclass(eq=False)
class _Chunk:
    """Runs ``r0:r1`` of a plan: their bags ``r0·n : r1·n`` and table rows ``e0:e1``, with the
    transposed bag and the sampling pattern of :class:`~grokinterp.model.fastpath.BagIndex`
    restricted to them (bag and row ids local to the chunk; ``t_perm`` indexes the global slots)."""

    r0: int
    r1: int
    e0: int
    e1: int
    bag_idx: Tensor  # [bags of the chunk, k] chunk-local table rows
    t_rows: Tensor  # chunk-local bag of each slot, sorted by table row
    t_offsets: Tensor  # [e1 − e0 + 1]
    t_perm: Tensor  # global flattened slot of each entry of the transposed bag
    pattern: Tensor  # sparse CSR [bags of the chunk, e1 − e0], chunk-local rows


def _chunks(bag: BagIndex, R: int, n: int, rows_per_run: int, width: int) -> tuple[_Chunk, ...]:
    size = max(1, min(R, CHUNK_ELEMENTS // max(1, n * width)))
    k = bag.bag_idx.shape[1]
    out = []
    for r0 in range(0, R, size):
        r1 = min(R, r0 + size)
        e0, e1 = r0 * rows_per_run, r1 * rows_per_run
        idx = bag.bag_idx[r0 * n: r1 * n]
        local = BagIndex.build(idx - e0, e1 - e0)  # a run's bags read only its own table rows
        out.append(_Chunk(r0, r1, e0, e1, local.bag_idx, local.t_rows, local.t_offsets, local.t_perm + r0 * n * k,
                          local.pattern))
    return tuple(out)


class _TablesLoss(torch.autograd.Function):
    """Per-run weighted float64 cross-entropies of the ``tables`` logits, and the logits.

    Everything from the table to the loss runs chunk by chunk (:data:`CHUNK_ELEMENTS`), and each
    chunk's gradients are computed in the forward while its activations are in the cache (a run's
    loss depends on its own inputs only); the backward scales them by the incoming gradient.
    The unembedding columns are padded with zeros to a multiple of 8 (``vocab_pad``), which
    matrix-product kernels handle about twice as fast as an odd width.
    """

    @staticmethod
    def forward(ctx, w: Tensor, vals: Tensor, OVr: Tensor, c: Tensor, W_L: Tensor,  # type: ignore[override]
                plan: "StackPlan", labels: Tensor, weights: Tensor, kind: str = "cross_entropy") -> tuple[Tensor, Tensor]:
        cfg = plan.cfg
        R, n, dm, H, V = plan.n_runs, plan.n_examples, cfg.d_mlp, cfg.n_heads, cfg.d_vocab_out
        Vp = W_L.shape[-1]
        rows, e = vals.shape[-2], vals.shape[-1]
        k = OVr.shape[-1]
        relu = cfg.act_fn == "relu"
        grads = any(ctx.needs_input_grad[:5])
        loss = torch.empty(R, dtype=torch.float64, device=w.device)
        logits = torch.empty(R, n, Vp, dtype=w.dtype, device=w.device)  # padded; the caller drops the padding
        if grads:
            w_flat = w.reshape(-1)
            grad_w, grad_vals, grad_OVr = torch.empty_like(w), torch.empty_like(vals), torch.empty_like(OVr)
            grad_c, grad_WL = torch.empty_like(c), torch.empty_like(W_L)
        for ch in plan.chunks:
            r0, r1 = ch.r0, ch.r1
            nr = r1 - r0
            vals_c, OVr_c = vals[r0:r1].reshape(nr * H, rows, e), OVr[r0:r1].reshape(nr * H, e, k)
            T4 = torch.bmm(vals_c, OVr_c).view(nr, H, rows, k)  # this chunk's table
            # the query's attention weight is 1 − the key positions' (the fold in stacked_final_logits)
            Tq = T4[:, :, -1:].clone()
            T4[:, :, :-1] -= Tq
            Tq_sum = Tq.sum(1) if plan.attn is None else Tq.sum(1) * plan.attn[2][r0:r1, None, None]
            cq = c[r0:r1, None] + Tq_sum  # [nr, 1, k]
            T = T4.view(-1, k)
            out = F.embedding_bag(ch.bag_idx, T, per_sample_weights=w[r0 * n: r1 * n], mode="sum")  # [nr·n, k]
            out.view(nr, n, k).add_(cq)
            post = out[:, :dm]
            if relu:
                post.relu_()
            else:
                pre = post.clone()
                post.copy_(F.gelu(pre))
            post3 = post.view(nr, n, dm)
            z = torch.baddbmm(out[:, dm:].view(nr, n, Vp), post3, W_L[r0:r1], out=logits[r0:r1])  # [nr, n, Vp]
            lab, wt = labels[r0:r1, :, None], weights[r0:r1, :, None]
            if kind != "cross_entropy":
                loss[r0:r1], g64 = _other_loss(kind, z, lab, wt, V, grads)
                if not grads:
                    continue
            else:
                # the cross-entropy in float64: nll = log Σ_j exp(z_j − max) − (z_label − max)
                zd = z.double()
                if Vp > V:
                    zd[..., V:] = -torch.inf  # the padding columns take no part (exp → 0)
                zd.sub_(zd.amax(-1, keepdim=True))
                ez = zd.exp()
                se = ez.sum(-1, keepdim=True)
                loss[r0:r1] = ((se.log() - zd.gather(-1, lab)) * wt).sum((1, 2))
                if not grads:
                    continue
                # d loss_r / d logits = wt · (softmax − onehot(label)), in float64, then float32 (0 in the padding)
                g64 = ez.mul_(wt / se)
                g64.scatter_add_(-1, lab, -wt)
            gout = torch.empty_like(out)  # d loss / d [pre | direct | padding]
            g = gout[:, dm:].view(nr, n, Vp)
            g.copy_(g64)
            torch.bmm(post3.transpose(1, 2), g, out=grad_WL[r0:r1])
            gpost = torch.bmm(g, W_L[r0:r1].transpose(1, 2)).view(-1, dm)
            gout[:, :dm] = (torch.ops.aten.threshold_backward(gpost, post, 0) if relu
                            else torch.ops.aten.gelu_backward(gpost, pre))
            gT = F.embedding_bag(ch.t_rows, gout, ch.t_offsets, per_sample_weights=w_flat[ch.t_perm], mode="sum",
                                 include_last_offset=True)  # [nr · head · rows, k]; the query rows get nothing
            gw = torch.sparse.sampled_addmm(ch.pattern, gout, T.t(), beta=0.0)
            grad_w[r0 * n: r1 * n] = gw.values().view(-1, w.shape[1])
            gc = torch.sum(gout.view(nr, n, k), 1, out=grad_c[r0:r1])
            gT4 = gT.view(nr, H, rows, k)
            gq = gc[:, None] if plan.attn is None else gc[:, None] * plan.attn[2][r0:r1, None, None]
            torch.sub(gq, gT4[:, :, :-1].sum(2), out=gT4[:, :, -1])
            gT3 = gT.view(nr * H, rows, k)
            torch.bmm(gT3, OVr_c.transpose(1, 2), out=grad_vals[r0:r1].view(nr * H, rows, e))
            torch.bmm(vals_c.transpose(1, 2), gT3, out=grad_OVr[r0:r1].view(nr * H, e, k))
        if grads:
            ctx.save_for_backward(grad_w, grad_vals, grad_OVr, grad_c, grad_WL)
        ctx.mark_non_differentiable(logits)
        return loss, logits

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_logits: Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        if not (grad_loss.device.type == "cpu" and bool((grad_loss == 1).all())):  # in training it is
            s = grad_loss.to(saved[0].dtype)
            saved = [t * s.view(-1, *[1] * (t.ndim - 1)) for t in (saved[0].view(len(s), -1), *saved[1:])]
            saved[0] = saved[0].view_as(ctx.saved_tensors[0])
        return (*saved, None, None, None, None)


def _other_loss(kind: str, z: Tensor, lab: Tensor, wt: Tensor, V: int, grads: bool) -> tuple[Tensor, Tensor | None]:
    """Per-run weighted float64 StableMax cross-entropy or MSE of one chunk's padded logits
    ``z [runs, n, Vp]`` (the padding columns take no part), and its gradient at ``z`` (float64, 0 in
    the padding) when ``grads``.

    Notes:
        StableMax (Prieto et al. 2025): ``s(x) = x + 1`` for ``x ≥ 0``, ``1 / (1 − x)`` below;
        ``loss = log Σ_c s(z_c) − log s(z_y)``; ``∂/∂z_c = s'(z_c) / Σ s − [c = y] s'(z_y) / s(z_y)``
        with ``s'(x) = 1`` for ``x ≥ 0`` and ``s(x)²`` below. MSE (Omnigrok):
        ``loss = (1/V) Σ_c (z_c − [c = y])²``, ``∂/∂z_c = 2 (z_c − [c = y]) / V``.
    """
    x = z[..., :V].double()
    if kind == "stablemax":
        neg = x < 0
        s = torch.where(neg, 1.0 / (1.0 - x.clamp(max=0)), x.clamp(min=0) + 1.0)
        S = s.sum(-1, keepdim=True)
        sy = s.gather(-1, lab)
        loss = ((S.log() - sy.log()) * wt).sum((1, 2))
        if not grads:
            return loss, None
        ds = torch.where(neg, s * s, torch.ones_like(s))
        g = ds * (wt / S)
        g.scatter_add_(-1, lab, -wt * ds.gather(-1, lab) / sy)
    elif kind == "mse":
        d = x.clone()
        d.scatter_add_(-1, lab, -torch.ones_like(wt))
        loss = (d.square().mean(-1, keepdim=True) * wt).sum((1, 2))
        if not grads:
            return loss, None
        g = d * (wt * (2.0 / V))
    else:
        raise ValueError(f"unknown loss {kind!r}")
    return loss, F.pad(g, (0, z.shape[-1] - V))


def _gather_rows(table: Tensor, idx: Tensor) -> Tensor:
    # index_select's backward (index_add) is fastest on CPU; embedding's is deterministic on CUDA
    return F.embedding(idx, table) if table.is_cuda else table.index_select(0, idx.reshape(-1)).view(*idx.shape, -1)


def _attention(params: dict[str, Tensor], plan: StackPlan) -> tuple[Tensor, Tensor, Tensor]:
    """``EP [run, pos·vocab, d_model]``, the query rows ``x_q [run, d_model]`` and the final position's
    attention ``[run, batch, pos, head]``."""
    cfg = plan.cfg
    R, H, n_ctx, V = plan.n_runs, cfg.n_heads, cfg.n_ctx, cfg.d_vocab
    W_E, W_pos = params["embed.W_E"], params["pos_embed.W_pos"]
    d = W_E.shape[-1]
    EP = (W_E[:, None] + W_pos[:, :n_ctx, None]).reshape(R, n_ctx * V, d)  # [run, pos·vocab, d_model]
    x_q = _gather_rows(EP.reshape(R * n_ctx * V, d), plan.eq_rows)  # [run, d_model]
    kq = tables.query_key_map(x_q, params["blocks.0.attn.W_Q"], params["blocks.0.attn.W_K"])  # [run, d_model, head]
    S = torch.bmm(EP, kq)  # [run, pos·vocab, head]
    scores = _gather_rows(S.reshape(R * n_ctx * V, H), plan.rows)  # [run, batch, pos, head]
    pattern = scores.softmax(dim=2)
    if plan.attn is not None:  # attention coefficient (Zhong et al.): every weight a·softmax + (1 − a)
        a, one_minus_a, _ = plan.attn
        pattern = pattern * a[:, None, None, None] + one_minus_a[:, None, None, None]
    return EP, x_q, pattern


def _tables_parts(params: dict[str, Tensor], plan: StackPlan, EP: Tensor, x_q: Tensor, pattern: Tensor,
                  pad: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What the ``tables`` table is made of: the bag weights ``w [run · batch, pos · head]``, the value
    rows ``vals [run, head, rows, d_head]`` of the key positions' tokens and of the query, each head's
    read ``OVr = W_O [W_in | W_U] [run, head, d_head, k]``, the constant ``c [run, k]`` and
    ``W_L = W_out W_U [run, d_mlp, vocab]``; ``k = d_mlp + vocab``, plus ``pad`` zero columns of the
    unembedding (in ``OVr``, ``c`` and ``W_L``). ``w`` holds the key positions' weights only: the
    query's is ``1 −`` their sum (the fold in :func:`stacked_final_logits`)."""
    if plan.bag is None:
        raise ValueError("this StackPlan was built for impl='dense'")
    cfg = plan.cfg
    R, n, H, n_ctx, V = plan.n_runs, plan.n_examples, cfg.n_heads, cfg.n_ctx, cfg.d_vocab
    nv = n_ctx - 1
    W_in, W_U = params["blocks.0.mlp.W_in"], params["unembed.W_U"]
    vals = torch.matmul(torch.cat([EP[:, : nv * V], x_q[:, None]], dim=1)[:, None], params["blocks.0.attn.W_V"])
    W_read = tables.read_weights(W_in, W_U)  # [run, d_model, d_mlp + vocab]
    c = tables.constant_read(x_q, W_read, params["blocks.0.mlp.b_in"], params["blocks.0.mlp.b_out"], W_U)
    OVr = tables.ov_read(params["blocks.0.attn.W_O"], W_read)
    W_L = params["blocks.0.mlp.W_out"] @ W_U
    if pad:
        OVr, c, W_L = (F.pad(t, (0, pad)) for t in (OVr, c, W_L))
    return pattern[:, :, :nv].reshape(R * n, nv * H), vals, OVr, c, W_L


def stacked_losses(params: dict[str, Tensor], plan: StackPlan, labels: Tensor,
                   weights: Tensor, loss: str = "cross_entropy") -> tuple[Tensor, Tensor]:
    """Per-run weighted float64 losses of the ``tables`` logits, and the logits (no gradient).

    Args:
        params: TransformerLens-named parameters stacked ``[run, ...]``.
        plan: the :class:`StackPlan` of the token sets (built for ``tables``).
        labels: ``[run, batch]`` int64.
        weights: ``[run, batch]`` float64 weight of each example in its run's loss.
        loss: ``cross_entropy`` (default), ``stablemax`` or ``mse`` (``TrainConfig.loss``; the
            per-example losses of :mod:`grokinterp.training.step`, with their gradients in closed form).

    Returns:
        ``loss [run]`` (float64, differentiable in ``params``) and ``logits [run, batch, d_vocab_out]``
        (:func:`stacked_final_logits`).

    Notes:
        ``loss[r] = Σ_i weights[r, i] · (−log softmax(logits[r, i])[labels[r, i]])`` in float64 (or the
        StableMax cross-entropy, or the MSE against one-hot targets: :func:`_other_loss`). The
        bag, the MLP, the unembedding and the loss run a few runs at a time (:data:`CHUNK_ELEMENTS`),
        each chunk's gradients computed while its activations are in the cache.
    """
    EP, x_q, pattern = _attention(params, plan)
    V = plan.cfg.d_vocab_out
    w, vals, OVr, c, W_L = _tables_parts(params, plan, EP, x_q, pattern, pad=_padded(V) - V)
    loss_r, logits = _TablesLoss.apply(w, vals, OVr, c, W_L, plan, labels, weights, loss)
    return loss_r, logits[..., :V]


def _padded(vocab: int) -> int:
    return -(-vocab // 8) * 8


def _generic_logits(params: dict[str, Tensor], plan: StackPlan) -> Tensor:
    """``[run, batch, vocab]``: the family's functional forward over the stacked parameters."""
    if plan.tokens is None:
        raise ValueError("this StackPlan was not built for impl='generic'")
    family = get_family(getattr(plan.cfg, "family", "transformer"))
    return family.forward(params, plan.tokens, plan.cfg, attn_coeff=plan.attn_coeff)


def stacked_final_logits(params: dict[str, Tensor], plan: StackPlan, impl: str = "tables") -> Tensor:
    """Logits at the last position of every run, ``[run, batch, d_vocab_out]``.

    Args:
        params: TransformerLens-named parameters stacked ``[run, ...]``.
        plan: the :class:`StackPlan` of the token sets (built for ``impl``).
        impl: ``tables``, ``dense`` or ``generic`` (module notes).

    Notes:
        Per run, with ``EP[j, t] = W_E[t] + W_pos[j]``, the query ``x_q = EP[last, =]`` and
        attention ``A = softmax_j(EP[j, tok_j] · kq)``: ``tables`` computes
        ``[pre | direct] = c + Σ_{j, h} A[j, h] T[h, j, tok_j]`` with
        ``T[h, j, t] = EP[j, t] W_V[h] W_O[h] [W_in | W_U]`` and ``c = x_q [W_in | W_U] + [b_in | b_out W_U]``,
        then ``logits = direct + act(pre) W_out W_U``. The fold: the query's weight is
        ``A[last, h] = 1 − Σ_{j < last} A[j, h]``, so the bag sums only the key positions,
        ``c + Σ_h T[h, =] + Σ_{j < last, h} A[j, h] (T[h, j, tok_j] − T[h, =])`` (8 rows instead of 12 at
        n_ctx = 3 and four heads; the single-run fast path folds the same way); ``dense`` computes
        ``z_h = Σ_j A[j, h] EP[j, tok_j] W_V[h]``, ``x = x_q + Σ_h z_h W_O[h]`` and
        ``logits = (x + act(x W_in + b_in) W_out + b_out) W_U``.
    """
    if impl == "generic":
        return _generic_logits(params, plan)
    cfg = plan.cfg
    R, n = plan.n_runs, plan.n_examples
    H, dm, n_ctx, V = cfg.n_heads, cfg.d_mlp, cfg.n_ctx, cfg.d_vocab
    W_E, W_pos, W_Q, W_K, W_V, W_O, W_in, b_in, W_out, b_out, W_U = (params[k] for k in _NAMES)
    d = W_E.shape[-1]
    EP, x_q, pattern = _attention(params, plan)
    if impl == "tables":
        w, vals, OVr, c, W_L = _tables_parts(params, plan, EP, x_q, pattern)
        T = torch.matmul(vals, OVr)  # [run, head, key rows + the query row, k]
        Tq = T[:, :, -1:]
        k = T.shape[-1]
        Tq_sum = Tq.sum(1) if plan.attn is None else Tq.sum(1) * plan.attn[2][:, None, None]
        out = bag_sum(w, (T - Tq).reshape(-1, k), plan.bag).view(R, n, k) + (c[:, None] + Tq_sum)
        pre, direct = out[..., :dm], out[..., dm:]
        post = torch.relu(pre) if cfg.act_fn == "relu" else F.gelu(pre)
        return torch.baddbmm(direct, post, W_L)
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
