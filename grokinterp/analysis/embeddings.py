"""Embedding pictures: 2-D maps (PCA or t-SNE) of a run's token embeddings or of a hidden layer, coloured by
a label the task defines (issue 22; Power et al. 2022 show t-SNE pictures of learned embeddings).

=============  ====================================================  =============================================
``what``       points                                                colour (``Task.color_labels``)
=============  ====================================================  =============================================
``embed``      the rows of ``embed.W_E`` (one per residue / element)  the symbol: ``a + b``: the residue; a group
                                                                     (``S5``): its conjugacy class
``hidden``     a hidden layer's activations on the task's inputs      the input's label, by the same rule; a dataset
               (every valid pair, or every image; at most              task (``digits``): the digit
               ``max_points``, a seeded draw)
=============  ====================================================  =============================================

Methods: ``pca`` (numpy's SVD of the centred points, each component's sign fixed so that its largest
loading is positive: no randomness, no extra package), ``tsne`` (scikit-learn's ``TSNE``, ``init="pca"``,
``random_state=seed``) and ``opentsne`` (openTSNE, ``random_state=seed``). scikit-learn and openTSNE are
optional (the ``embed`` extra; scikit-learn is in ``dev``) and imported only when asked for. For a seed,
the same run and arguments give the same map (tested; t-SNE on one machine and thread count).

Example:
    >>> m = embedding_map(run, what="hidden", method="tsne", seed=0)     # doctest: +SKIP
    >>> m.points.head()  # x, y, label, label_name, index                # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import AnalysisError

__all__ = ["EMBED_METHODS", "EmbeddingMap", "embedding_map", "project_2d"]

EMBED_METHODS = ("pca", "tsne", "opentsne")


@dataclass
class EmbeddingMap:
    """A 2-D map of points: ``points`` has ``x, y, label, label_name, index`` (the symbol or example each
    point is), one row per point; ``explained`` the variance share of the two PCA axes (PCA only)."""

    points: pd.DataFrame
    method: str
    what: str
    epoch: int
    title: str
    explained: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)


def _pca(x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    xc = x - x.mean(0, keepdims=True)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, vt.shape[0])
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
    signs[signs == 0] = 1
    y = xc @ (comps * signs[:, None]).T
    if k < 2:
        y = np.concatenate([y, np.zeros((len(y), 2 - k))], 1)
    var = (s ** 2).sum()
    ev = tuple(float(s[i] ** 2 / var) if var > 0 and i < len(s) else 0.0 for i in range(2))
    return y, ev  # type: ignore[return-value]


def project_2d(x: np.ndarray, method: str = "pca", seed: int = 0, perplexity: float = 30.0
               ) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Points ``[n, d]`` → ``([n, 2], explained)``: PCA, t-SNE (scikit-learn) or openTSNE (module notes).

    Raises:
        AnalysisError: an unknown method, fewer than 3 points, or the package a method needs missing.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) < 3:
        raise AnalysisError(f"points: need at least 3 points [n, d], got shape {list(x.shape)}")
    if method not in EMBED_METHODS:
        raise AnalysisError(f"method: must be one of {', '.join(EMBED_METHODS)}, got {method!r}")
    if method == "pca":
        return _pca(x)
    perp = float(min(perplexity, max(1.0, (len(x) - 1) / 3.0)))
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise AnalysisError("method 'tsne' needs scikit-learn (pip install 'grokinterp[embed]')") from None
        y = TSNE(n_components=2, perplexity=perp, init="pca", random_state=int(seed)).fit_transform(x)
        return np.asarray(y, dtype=np.float64), None
    try:
        from openTSNE import TSNE as OpenTSNE
    except ImportError:
        raise AnalysisError("method 'opentsne' needs openTSNE (pip install 'grokinterp[embed]')") from None
    y = OpenTSNE(n_components=2, perplexity=perp, random_state=int(seed), n_jobs=1).fit(x)
    return np.asarray(y, dtype=np.float64), None


def _hidden_points(run: Any, epoch: int, layer: int | None, max_points: int, seed: int):
    """``(acts [n, d], label symbols [n], example index [n], what)`` of a hidden layer on the task's inputs."""
    cfg = run.config.model
    if getattr(cfg, "d_input", 0):
        from .vectors import hidden_activations

        acts, y = hidden_activations(run, epoch, layer, "all")
        trn, tst = run.split_pairs()
        idx = np.concatenate([trn, tst])
        return acts.numpy(), y.numpy(), idx, f"hidden layer {cfg.n_hidden_layers - 1 if layer is None else layer}"
    from ..model.families import family_of

    task = run.task
    valid = task.valid_pairs()
    labels = task.label_grid()
    model = run.model(epoch)
    fam = family_of(cfg)
    hook = fam.hidden_hook(cfg) if layer is None else (
        f"hidden.{layer}.hook_post" if cfg.family == "mlp" else f"blocks.{layer}.mlp.hook_post")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(valid), size=min(max_points, len(valid)), replace=False))
    pairs = valid[pick]
    tokens = torch.from_numpy(task.dataset().select(pairs, getattr(cfg, "input_layout", "a_b_eq"))[0])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == hook)
    acts = cache[hook]
    if acts.ndim == 3:  # [batch, pos, d]: the readout position's
        acts = acts[:, -1]
    return acts.numpy(), labels[pairs], pairs, hook


def embedding_map(run: Any, *, what: str = "embed", method: str = "pca", epoch: int = -1, layer: int | None = None,
                  seed: int = 0, max_points: int = 2000, perplexity: float = 30.0) -> EmbeddingMap:
    """A 2-D map of a run's token embeddings or hidden layer, coloured by the task's label (module notes).

    Args:
        run: a :class:`~grokinterp.store.run.Run` of any task and family.
        what: ``embed`` (rows of ``embed.W_E``) or ``hidden`` (a hidden layer on the task's inputs).
        method: ``pca``, ``tsne`` or ``opentsne``.
        epoch: the checkpoint (``-1``: last).
        layer: ``hidden``: which hidden layer / block (default: the family's neurons).
        seed: seeds t-SNE and the draw of at most ``max_points`` inputs.
        max_points: ``hidden``: the most inputs drawn (t-SNE is quadratic in them).
        perplexity: t-SNE's perplexity (capped at a third of the points).

    Raises:
        AnalysisError: ``embed`` on a model without token embeddings (one-hot inputs, input vectors),
            an unknown ``what`` / ``method``.
    """
    if what not in ("embed", "hidden"):
        raise AnalysisError(f"what: must be 'embed' or 'hidden', got {what!r}")
    if max_points < 3:
        raise AnalysisError(f"max_points: must be at least 3, got {max_points}")
    task = run.task
    e = run.resolve_epoch(epoch)
    notes: list[str] = []
    if what == "embed":
        params = run.params(e)
        if "embed.W_E" not in params:
            why = ("it reads input vectors" if getattr(run.config.model, "d_input", 0) else "it reads one-hot inputs")
            raise AnalysisError(f"what='embed': the model has no token embedding embed.W_E ({why}); use what='hidden'")
        W_E = params["embed.W_E"].numpy()[: task.n]  # the symbols' rows ('=' and operation tokens left out)
        x, symbols, index = W_E, np.arange(task.n), np.arange(task.n)
        title = f"token embeddings W_E ({task.n} symbols)"
    else:
        x, symbols, index, hook = _hidden_points(run, e, layer, max_points, seed)
        if len(x) > max_points:
            pick = np.sort(np.random.default_rng(seed).choice(len(x), size=max_points, replace=False))
            x, symbols, index = x[pick], symbols[pick], index[pick]
            notes.append(f"{max_points} of the inputs, a draw seeded by {seed}")
        title = f"{hook} on {len(x)} inputs"
    ids, names = task.color_labels(symbols)
    y, explained = project_2d(x, method, seed, perplexity)
    pts = pd.DataFrame({"x": y[:, 0], "y": y[:, 1], "label": ids,
                        "label_name": [names[i] if 0 <= i < len(names) else str(i) for i in ids], "index": index})
    return EmbeddingMap(pts, method, what, int(e), f"{title}, {method}" + (f", seed {seed}" if method != "pca" else ""),
                        explained, notes)
