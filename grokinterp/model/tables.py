"""The per-(position, token) table fold of a one-layer model: the one place it is written.

In a one-layer attention-only-then-MLP model, what the final position reads from key position
``j`` depends only on the token there. With ``x = W_E[t] + W_pos[j]`` (a row of ``EP``) and the
query row ``x_q`` (the ``=`` token at the last position):

* attention score: ``x · kq[:, h]`` with ``kq = W_K[h] (x_q W_Q[h]) / √d_head`` (:func:`query_key_map`);
* what head ``h`` writes when it attends fully to ``x``, read by the MLP input and the unembedding:
  ``T[x, h] = x W_V[h] W_O[h] [W_in | W_U]`` (:func:`value_table`, with :func:`read_weights`);
* what the query's own residual stream and the biases add: ``c = x_q [W_in | W_U] + [b_in | b_out W_U]``
  (:func:`constant_read`).

The training fast path (:mod:`~grokinterp.model.fastpath`), the grid forward over checkpoints
(:mod:`~grokinterp.model.grid`) and the head ablations all build their tables here. Every function
takes optional leading axes (``...``, e.g. ``ckpt``) and is differentiable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["query_key_map", "read_weights", "ov_read", "value_table", "constant_read", "head_outputs"]


def query_key_map(x_query: Tensor, W_Q: Tensor, W_K: Tensor) -> Tensor:
    """``kq [..., d_model, n_heads]``: scores of key rows ``x`` are ``x @ kq``.

    Args:
        x_query: ``[..., d_model]`` residual stream of the query position.
        W_Q, W_K: ``[..., n_heads, d_model, d_head]``.

    Notes:
        ``kq[:, h] = W_K[h] (x_q W_Q[h]) / √d_head``.
    """
    q = torch.einsum("...d,...hde->...he", x_query, W_Q)
    return torch.einsum("...hde,...he->...dh", W_K, q) / math.sqrt(W_Q.shape[-1])


def read_weights(W_in: Tensor, W_U: Tensor) -> Tensor:
    """``[W_in | W_U]`` ``[..., d_model, d_mlp + vocab]``: how the MLP input and the direct path read the stream."""
    return torch.cat([W_in, W_U], dim=-1)


def ov_read(W_O: Tensor, W_read: Tensor) -> Tensor:
    """``W_O[h] [W_in | W_U]``: ``[..., n_heads, d_head, d_mlp + vocab]``."""
    return torch.einsum("...hed,...dk->...hek", W_O, W_read)


def value_table(x: Tensor, W_V: Tensor, OV_read: Tensor) -> Tensor:
    """``T [..., rows, n_heads, k]``: what each head adds to ``[pre | direct]`` attending fully to row ``x``.

    Args:
        x: ``[..., rows, d_model]`` key rows (``W_E[t] + W_pos[j]``).
        W_V: ``[..., n_heads, d_model, d_head]``.
        OV_read: ``[..., n_heads, d_head, k]`` from :func:`ov_read` (scaled per head for ablations).
    """
    vals = torch.einsum("...rd,...hde->...hre", x, W_V)  # [..., head, rows, d_head]
    return torch.matmul(vals, OV_read).transpose(-3, -2)


def constant_read(x_query: Tensor, W_read: Tensor, b_in: Tensor, b_out: Tensor, W_U: Tensor) -> Tensor:
    """``c = x_q [W_in | W_U] + [b_in | b_out W_U]`` ``[..., d_mlp + vocab]``: the input-independent part."""
    direct_bias = (b_out.unsqueeze(-2) @ W_U).squeeze(-2)
    return (x_query.unsqueeze(-2) @ W_read).squeeze(-2) + torch.cat([b_in, direct_bias], dim=-1)


def head_outputs(x: Tensor, W_V: Tensor, W_O: Tensor) -> Tensor:
    """``[..., rows, n_heads, d_model]``: each head's output when it attends fully to row ``x``."""
    OV = torch.einsum("...hde,...hef->...hdf", W_V, W_O)
    return torch.einsum("...rd,...hdf->...rhf", x, OV)
