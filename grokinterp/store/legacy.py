"""Import checkpoints of the reference implementations into a run directory, without unpickling code.

Files are read with ``torch.load(path, weights_only=True)`` only: tensors, lists, dicts, numbers
and strings come back, and a file that needs any other object (a class, a function) is refused
with a message naming it. The one exception is the TransformerLens config object of the grokking
demo: its pickled ``HookedTransformerConfig`` is mapped onto a stand-in that keeps the field
values and runs none of the file's code (through torch's allow-list of safe globals).

Two layouts are understood (``layout="auto"`` tells them apart by their keys):

``paper``
    Nanda et al.'s ``full_run_data.pth``: ``state_dicts`` (list), ``epochs`` (list),
    ``train_losses``, ``test_losses`` (one per epoch) and ``config`` (a dict: ``p``,
    ``frac_train``, ``d_model``, ``lr``, ``weight_decay``, ``seed``, ``fn_name``, ...). Parameters
    are in the paper code's own layout and are transposed into ours: ``W_E [d_model, d_vocab]``,
    ``W_U [d_model, d_vocab]``, ``W_K/W_Q/W_V [n_heads, d_head, d_model]``,
    ``W_O [d_model, n_heads·d_head]`` (head-major), ``W_in [d_mlp, d_model]``,
    ``W_out [d_model, d_mlp]``; the attention ``mask`` buffer is dropped.
``tl-demo``
    The TransformerLens grokking demo's ``.pth``: ``model`` (final state dict), ``config``,
    ``checkpoints`` (list of state dicts), ``checkpoint_epochs``, ``train_losses``,
    ``test_losses``, ``train_indices``, ``test_indices``. Parameter names are already ours;
    ``b_Q/b_K/b_V/b_O`` and ``unembed.b_U`` are dropped when they are zero (the demo freezes them
    at zero) and refused otherwise; ``mask`` / ``IGNORE`` buffers are dropped.

Conventions of the import (all recorded under ``imported_from`` in ``run.json``):

- **Epochs.** Both reference loops save a state dict *after* the optimizer step of the epoch
  they label it with, so the checkpoint labelled ``e`` is our epoch ``e + 1`` (the model after
  ``e + 1`` steps); ``epoch_offset`` changes this. Train losses (and the paper's test losses) are
  computed before the step: index ``i`` is our epoch ``i``; the demo computes test losses after
  the step: index ``i`` is our epoch ``i + 1``.
- **Output vocabulary.** The paper's unembedding has ``p + 1`` columns (one for ``=``); ours has
  ``p``. The ``=`` column is dropped: logits of the residues are unchanged, but the softmax no
  longer includes ``=``, so our losses can be slightly lower than the recorded ones.
- **Split.** The demo stores its split (``train_indices``: rows ``a·p + b``), used as is. The paper's
  code does not store it: it derives it from ``config["seed"]`` with Python's ``random``
  (``random.seed(seed); random.shuffle(pairs)`` over the row-major ``(a, b)`` list, the first
  ``int(frac_train·p²)`` pairs train). We replay that derivation (``split_seed`` overrides the seed)
  and then check it: the train loss recomputed from the imported weights on the derived split
  must match the recorded one (``loss_check``); a mismatch raises a :class:`RunWarning`.
- **Training config.** ``train`` records the reference hyper-parameters (``lr``, weight decay,
  betas (0.9, 0.98), warm-up 10 for the paper, none for the demo) as metadata; an imported run
  holds no optimizer state and is never resumed. ``run.epochs`` lists its real checkpoint epochs
  (the ``checkpoints`` section of its config only approximates them).
- **Metrics.** Recorded train/test losses per epoch; train/test accuracy at checkpoint epochs,
  computed from the imported weights on the stored split; ``lr`` is left empty.

Example:
    >>> run = import_legacy("full_run_data.pth", "checkpoints/paper-import")   # doctest: +SKIP
    >>> run.info["imported_from"]["loss_check"]                                # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import pickle
import random
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import CheckpointSchedule, ModelConfig, RunConfig, TaskConfig, TrainConfig
from ..errors import ConfigError, RunError
from ..model import param_shapes
from ..model.hooked import HookedGrokTransformer
from . import layout as _io
from .run import RunWarning, load_run
from .writer import METRIC_COLUMNS, CheckpointWriter, run_metadata, start_run

__all__ = ["import_legacy", "read_legacy", "LAYOUTS"]

LAYOUTS = ("paper", "tl-demo")

# The paper's fn_name → our operation name.
_PAPER_OPS = {"add": "add", "subtract": "sub", "x2xyy2": "x2_xy_y2", "mul": "mul", "multiply": "mul"}
_ACT = {"relu": "relu", "gelu": "gelu"}
# Names under which TransformerLens versions pickle HookedTransformerConfig.
_TL_CONFIG_NAMES = (
    "transformer_lens.HookedTransformerConfig.HookedTransformerConfig",
    "transformer_lens.config.HookedTransformerConfig.HookedTransformerConfig",
    "transformer_lens.config.HookedTransformerConfig",
)
_LOSS_RTOL = 1e-3


class _PickledConfig:
    """Stand-in for a config object pickled into a legacy file: keeps its fields, runs no code of it."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) as pickle's BUILD allows
            state = {**(state[0] or {}), **(state[1] or {})}
        self.fields = dict(state) if isinstance(state, dict) else {}


def read_legacy(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; refusals become :class:`RunError`."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: no such file")
    allowed = [(_PickledConfig, name) for name in _TL_CONFIG_NAMES]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if not any(k in text for k in ("GLOBAL", "allowlist", "Unsupported", "unrecognized function")):
            raise RunError(f"{path}: cannot read as a torch checkpoint (UnpicklingError: {text[:300]})") from None
        m = re.search(r"GLOBAL (\S+)", text) or re.search(r"function (<[^>]*>|\S+)", text)
        what = f" ({m.group(1)})" if m else ""
        raise RunError(
            f"{path}: refused: the file needs arbitrary unpickling{what}, which could run code from the file. "
            f"grokinterp reads only tensors, lists, dicts, numbers and strings (torch.load weights_only=True); "
            f"re-save the checkpoint with plain containers (e.g. config as a dict)"
        ) from None
    except Exception as e:  # torch raises RuntimeError / EOFError / zipfile errors on damaged files
        raise RunError(f"{path}: cannot read as a torch checkpoint ({type(e).__name__}: {str(e)[:300]})") from None


# -- small validators -----------------------------------------------------------------------------
def _as_int(x: Any, what: str, where: Path) -> int:
    if isinstance(x, Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, (float, np.floating)) and float(x).is_integer():
        x = int(x)
    if not isinstance(x, (int, np.integer)) or isinstance(x, bool):
        raise RunError(f"{where}: {what} must be an integer, got {x!r}")
    return int(x)


def _int_list(x: Any, what: str, where: Path) -> list[int]:
    if isinstance(x, Tensor):
        x = x.tolist()
    if not isinstance(x, (list, tuple)):
        raise RunError(f"{where}: {what} must be a list of integers, got {type(x).__name__}")
    return [_as_int(v, what, where) for v in x]


def _float_list(x: Any, what: str, where: Path) -> np.ndarray:
    if x is None:
        return np.zeros(0)
    if isinstance(x, Tensor):
        x = x.detach().double().flatten().tolist()
    try:
        arr = np.asarray([float(v.item() if isinstance(v, Tensor) else v) for v in x], dtype=np.float64)
    except (TypeError, ValueError):
        raise RunError(f"{where}: {what} must be a list of numbers") from None
    return arr


def _state_dict(sd: Any, what: str, where: Path) -> dict[str, Tensor]:
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise RunError(f"{where}: {what} must map parameter names to tensors")
    return dict(sd)


def _config_fields(cfg: Any, where: Path) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, _PickledConfig):
        return cfg.fields
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise RunError(f"{where}: 'config' must be a dict, got {type(cfg).__name__}")


def _tensor(sd: dict[str, Tensor], key: str, shape: tuple[int, ...], what: str, where: Path) -> Tensor:
    if key not in sd:
        raise RunError(f"{where}: {what}: parameter {key!r} is missing")
    t = sd[key]
    if tuple(t.shape) != shape:
        raise RunError(f"{where}: {what}: {key} has shape {list(t.shape)}, expected {list(shape)}")
    if not (t.is_floating_point()):
        raise RunError(f"{where}: {what}: {key} has dtype {t.dtype}, expected a floating-point tensor")
    return t.detach().to(torch.float32)


def _refuse_extra(sd: dict[str, Tensor], used: set[str], what: str, where: Path) -> None:
    extra = sorted(set(sd) - used)
    if extra:
        raise RunError(f"{where}: {what}: unexpected tensor(s) {extra[:6]}; this importer knows 1-layer-style "
                       f"models without LayerNorm (is this another architecture?)")


# -- layouts --------------------------------------------------------------------------------------
def _n_layers(sd: dict[str, Tensor]) -> int:
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(layers) + 1 if layers else 0


def _require_ndim(sd: dict[str, Tensor], keys: dict[str, int], what: str, where: Path) -> None:
    for key, ndim in keys.items():
        if key not in sd:
            raise RunError(f"{where}: {what}: parameter {key!r} is missing (another layout?)")
        if sd[key].ndim != ndim:
            raise RunError(f"{where}: {what}: {key} has shape {list(sd[key].shape)}, expected {ndim} dimensions")


def _paper_dims(sd: dict[str, Tensor], cfg: dict[str, Any], where: Path) -> dict[str, int]:
    _require_ndim(sd, {"embed.W_E": 2, "blocks.0.attn.W_Q": 3, "blocks.0.mlp.W_in": 2}, "state_dicts[0]", where)
    d_model, d_vocab = sd["embed.W_E"].shape
    n_heads, d_head, _ = sd["blocks.0.attn.W_Q"].shape
    dims = {"p": d_vocab - 1, "d_model": d_model, "n_heads": n_heads, "d_head": d_head,
            "d_mlp": sd["blocks.0.mlp.W_in"].shape[0], "n_layers": _n_layers(sd)}
    for ours, theirs in (("p", "p"), ("d_model", "d_model"), ("n_heads", "num_heads"), ("d_mlp", "d_mlp"),
                         ("n_layers", "num_layers")):
        if theirs in cfg and _as_int(cfg[theirs], f"config[{theirs!r}]", where) != dims[ours]:
            raise RunError(f"{where}: config[{theirs!r}] = {cfg[theirs]} but the weights have {ours} = {dims[ours]}")
    return dims


def _paper_params(sd: dict[str, Tensor], mc: ModelConfig, what: str, where: Path) -> tuple[dict[str, Tensor], Tensor]:
    """Our parameters and the paper's full unembedding ``[d_model, p + 1]`` (for the loss check)."""
    h, e, d, m, p = mc.n_heads, mc.d_head, mc.d_model, mc.d_mlp, mc.p
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> Tensor:
        used.add(key)
        return _tensor(sd, key, shape, what, where)

    W_pos = sd.get("pos_embed.W_pos")
    n_pos = W_pos.shape[0] if isinstance(W_pos, Tensor) and W_pos.ndim == 2 else mc.n_ctx
    if n_pos < mc.n_ctx:
        raise RunError(f"{where}: {what}: pos_embed.W_pos covers {n_pos} positions, the task needs {mc.n_ctx}")
    W_U_full = take("unembed.W_U", (d, p + 1))
    out = {
        "embed.W_E": take("embed.W_E", (d, p + 1)).T.contiguous(),
        "pos_embed.W_pos": take("pos_embed.W_pos", (n_pos, d))[: mc.n_ctx].contiguous(),
    }
    for L in range(mc.n_layers):
        b = f"blocks.{L}"
        for name in ("W_Q", "W_K", "W_V"):
            out[f"{b}.attn.{name}"] = take(f"{b}.attn.{name}", (h, e, d)).transpose(1, 2).contiguous()
        out[f"{b}.attn.W_O"] = take(f"{b}.attn.W_O", (d, h * e)).T.reshape(h, e, d).contiguous()
        out[f"{b}.mlp.W_in"] = take(f"{b}.mlp.W_in", (m, d)).T.contiguous()
        out[f"{b}.mlp.b_in"] = take(f"{b}.mlp.b_in", (m,))
        out[f"{b}.mlp.W_out"] = take(f"{b}.mlp.W_out", (d, m)).T.contiguous()
        out[f"{b}.mlp.b_out"] = take(f"{b}.mlp.b_out", (d,))
        used.add(f"{b}.attn.mask")
    out["unembed.W_U"] = W_U_full[:, :p].contiguous()
    _refuse_extra(sd, used, what, where)
    return out, W_U_full


def _tl_dims(sd: dict[str, Tensor], cfg: dict[str, Any], where: Path) -> dict[str, int]:
    _require_ndim(sd, {"embed.W_E": 2, "blocks.0.attn.W_Q": 3, "blocks.0.mlp.W_in": 2, "unembed.W_U": 2},
                  "first checkpoint", where)
    d_vocab, d_model = sd["embed.W_E"].shape
    n_heads, _, d_head = sd["blocks.0.attn.W_Q"].shape
    dims = {"p": d_vocab - 1, "d_model": d_model, "n_heads": n_heads, "d_head": d_head,
            "d_mlp": sd["blocks.0.mlp.W_in"].shape[1], "n_layers": _n_layers(sd),
            "d_vocab_out": sd["unembed.W_U"].shape[1]}
    for key in ("d_model", "n_heads", "d_head", "d_mlp", "n_layers"):
        if cfg.get(key) is not None and _as_int(cfg[key], f"config.{key}", where) != dims[key]:
            raise RunError(f"{where}: config.{key} = {cfg[key]} but the weights have {dims[key]}")
    if cfg.get("d_vocab") is not None and _as_int(cfg["d_vocab"], "config.d_vocab", where) != d_vocab:
        raise RunError(f"{where}: config.d_vocab = {cfg['d_vocab']} but embed.W_E has {d_vocab} rows")
    for key, ok in (("normalization_type", (None,)), ("attn_only", (False, None)),
                    ("positional_embedding_type", ("standard", None)), ("n_ctx", (3, None))):
        if cfg.get(key, None) not in ok:
            raise RunError(f"{where}: config.{key} = {cfg[key]!r} is not supported (grokinterp's model: no "
                           f"LayerNorm, attention + MLP, learned positions, n_ctx 3)")
    if dims["d_vocab_out"] not in (dims["p"], dims["p"] + 1):
        raise RunError(f"{where}: unembed.W_U has {dims['d_vocab_out']} outputs, expected p = {dims['p']} "
                       f"(or p + 1 with '=')")
    return dims


def _tl_params(sd: dict[str, Tensor], mc: ModelConfig, d_vocab_out: int, what: str,
               where: Path) -> tuple[dict[str, Tensor], Tensor]:
    used: set[str] = set()
    shapes = param_shapes(mc)
    out = {}
    for name, shape in shapes.items():
        if name == "unembed.W_U":
            shape = (mc.d_model, d_vocab_out)
        used.add(name)
        out[name] = _tensor(sd, name, shape, what, where)
    W_U_full = out["unembed.W_U"]
    out["unembed.W_U"] = W_U_full[:, : mc.p].contiguous()
    zero_biases = [f"blocks.{L}.attn.b_{x}" for L in range(mc.n_layers) for x in "QKVO"] + ["unembed.b_U"]
    for key in zero_biases:
        if key in sd:
            used.add(key)
            t = sd[key]
            if t.numel() and t.detach().abs().max().item() != 0:
                raise RunError(f"{where}: {what}: {key} is non-zero (max |b| = {t.abs().max().item():.3g}); "
                               f"grokinterp's model has no attention or unembedding biases, so importing it "
                               f"would change the model")
    for L in range(mc.n_layers):
        used.update({f"blocks.{L}.attn.mask", f"blocks.{L}.attn.IGNORE"})
    _refuse_extra(sd, used, what, where)
    return out, W_U_full


# -- split ----------------------------------------------------------------------------------------
def paper_split(p: int, frac_train: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper code's split, replayed: pair indices ``a·p + b`` of ``(train, test)``, sorted.

    Notes:
        ``gen_train_test``: ``pairs = [(i, j, p) for i in range(p) for j in range(p)]``,
        ``random.seed(seed); random.shuffle(pairs)``, train = the first ``int(frac_train·p²)``.
    """
    idx = list(range(p * p))
    random.Random(seed).shuffle(idx)
    div = int(frac_train * len(idx))
    return np.sort(np.array(idx[:div], dtype=np.int64)), np.sort(np.array(idx[div:], dtype=np.int64))


def _stored_split(obj: dict[str, Any], p: int, where: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if "train_indices" not in obj and "test_indices" not in obj:
        return None
    trn, tst = (np.asarray(_int_list(obj.get(k, []), k, where), dtype=np.int64)
                for k in ("train_indices", "test_indices"))
    allp = np.sort(np.concatenate([trn, tst]))
    if not np.array_equal(allp, np.arange(p * p)):
        raise RunError(f"{where}: train_indices and test_indices must together hold every row 0..{p * p - 1} once")
    return np.sort(trn), np.sort(tst)


# -- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def _evaluate(model: HookedGrokTransformer, W_U_full: Tensor, tokens: Tensor,
              labels: Tensor) -> tuple[float, float]:
    """Loss over the file's full unembedding (with ``=`` if it had one) and accuracy over our p logits."""
    if len(labels) == 0:
        return math.nan, math.nan
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n == last)
    logits_full = cache[last][:, -1] @ W_U_full
    loss = F.cross_entropy(logits_full.double(), labels).item()
    acc = (logits_full[:, : model.cfg.p].argmax(-1) == labels).double().mean().item()
    return loss, acc


# -- import ---------------------------------------------------------------------------------------
def detect_layout(obj: Any, where: Path) -> str:
    if not isinstance(obj, Mapping):
        raise RunError(f"{where}: expected a dict of checkpoints, got {type(obj).__name__}")
    if "state_dicts" in obj:
        return "paper"
    if "checkpoints" in obj or "model" in obj:
        return "tl-demo"
    raise RunError(f"{where}: unknown layout (keys {sorted(map(str, obj))[:10]}); expected the paper's "
                   f"'state_dicts'/'epochs' or the TransformerLens demo's 'model'/'checkpoints'")


def import_legacy(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = "auto",
    split_seed: int | None = None,
    epoch_offset: int = 1,
    overwrite: bool = False,
):
    """Import a reference implementation's checkpoint file into a new run directory.

    Args:
        path: a ``.pth`` file in the ``paper`` or ``tl-demo`` layout (module notes).
        out: the run directory to create (must not exist, or be empty; ``overwrite`` replaces a run).
        layout: ``auto``, ``paper`` or ``tl-demo``.
        split_seed: seed of the paper code's split derivation (default: ``config["seed"]``).
        epoch_offset: our epoch of the checkpoint labelled ``e`` is ``e + epoch_offset`` (1: saved
            after the optimizer step, as both reference loops do).
        overwrite: replace an existing run in ``out``.

    Returns:
        The loaded :class:`~grokinterp.run.Run`; ``run.info["imported_from"]`` says where it came
        from, how the split was obtained, and whether recorded losses were reproduced.

    Raises:
        RunError: the file is refused (needs arbitrary unpickling), malformed, of an unsupported
            architecture, or ``out`` is unusable. Nothing is left in ``out`` then.
    """
    src = Path(path)
    out = Path(out)
    if layout not in ("auto", *LAYOUTS):
        raise ConfigError(f"layout: must be auto, {' or '.join(LAYOUTS)}, got {layout!r}")
    if isinstance(epoch_offset, bool) or not isinstance(epoch_offset, int) or epoch_offset < 0:
        raise ConfigError(f"epoch_offset: must be a non-negative integer, got {epoch_offset!r}")
    _check_out(out, overwrite)
    obj = read_legacy(src)
    found = detect_layout(obj, src)
    if layout != "auto" and layout != found:
        raise RunError(f"{src}: looks like the {found!r} layout, not {layout!r}")
    cfg = _config_fields(obj.get("config"), src)
    notes: list[str] = []

    # -- checkpoints, dims, config ----------------------------------------------------------------
    if found == "paper":
        sds = obj["state_dicts"]
        if not isinstance(sds, (list, tuple)) or not sds:
            raise RunError(f"{src}: 'state_dicts' must be a non-empty list of state dicts")
        labels = _int_list(obj.get("epochs"), "'epochs'", src)
        if len(labels) != len(sds):
            raise RunError(f"{src}: {len(sds)} state dicts but {len(labels)} epochs")
        sds = [_state_dict(sd, f"state_dicts[{i}]", src) for i, sd in enumerate(sds)]
        dims = _paper_dims(sds[0], cfg, src)
        if cfg.get("use_ln"):
            raise RunError(f"{src}: config['use_ln'] is true; grokinterp's model has no LayerNorm")
        fn = cfg.get("fn_name", "add")
        if fn not in _PAPER_OPS:
            raise RunError(f"{src}: config['fn_name'] = {fn!r} is not supported (known: {sorted(_PAPER_OPS)})")
        operation = _PAPER_OPS[fn]
        if "fn_name" not in cfg:
            notes.append("config has no fn_name: assumed 'add'")
        act = str(cfg.get("act_type", "ReLU")).lower()
        tr_off, te_off, warmup = 0, 0, 10
    else:
        final = obj.get("model")
        sds = list(obj.get("checkpoints") or [])
        labels = _int_list(obj.get("checkpoint_epochs", []), "'checkpoint_epochs'", src) if sds else []
        if len(labels) != len(sds):
            raise RunError(f"{src}: {len(sds)} checkpoints but {len(labels)} checkpoint_epochs")
        sds = [_state_dict(sd, f"checkpoints[{i}]", src) for i, sd in enumerate(sds)]
        if final is not None:
            final = _state_dict(final, "'model'", src)
        first = sds[0] if sds else final
        if first is None:
            raise RunError(f"{src}: neither 'checkpoints' nor 'model' holds a state dict")
        dims = _tl_dims(first, cfg, src)
        operation = "add"
        notes.append("the TransformerLens demo trains a + b mod p: operation 'add' assumed")
        act = str(cfg.get("act_fn", "relu")).lower()
        tr_off, te_off, warmup = 0, 1, 0
    if act not in _ACT:
        raise RunError(f"{src}: activation {act!r} is not supported (relu or gelu)")
    p = dims["p"]
    if dims["d_head"] * dims["n_heads"] != dims["d_model"]:
        raise RunError(f"{src}: d_head × n_heads = {dims['d_head']}×{dims['n_heads']} ≠ d_model {dims['d_model']}; "
                       f"grokinterp's model needs d_head = d_model / n_heads")

    train_losses = _float_list(obj.get("train_losses"), "'train_losses'", src)
    test_losses = _float_list(obj.get("test_losses"), "'test_losses'", src)
    ckpts = [(e + epoch_offset, sd) for e, sd in zip(labels, sds)]
    if found == "tl-demo" and final is not None:
        final_epoch = max(len(train_losses), max((e for e, _ in ckpts), default=0))
        if not any(e == final_epoch for e, _ in ckpts):
            ckpts.append((final_epoch, final))
    ckpts.sort(key=lambda x: x[0])
    epochs = [e for e, _ in ckpts]
    if len(set(epochs)) != len(epochs) or (epochs and epochs[0] < 0):
        raise RunError(f"{src}: checkpoint epochs repeat or are negative: {epochs[:10]}")
    E = max([epochs[-1], len(train_losses) - 1 + tr_off, len(test_losses) - 1 + te_off, 0])

    # -- split ------------------------------------------------------------------------------------
    stored = _stored_split(obj, p, src)
    if stored is not None:
        trn, tst = stored
        split_note = "stored in the file (train_indices / test_indices, rows a·p + b)"
        seed = split_seed if split_seed is not None else _as_int(cfg.get("seed", 0) or 0, "config seed", src)
        frac = len(trn) / (p * p)
    else:
        seed = split_seed if split_seed is not None else cfg.get("seed")
        if seed is None:
            raise RunError(f"{src}: the file stores no split and its config has no 'seed' to derive it from; "
                           f"pass split_seed (--split-seed N)")
        seed = _as_int(seed, "config['seed']", src)
        if "frac_train" not in cfg:
            raise RunError(f"{src}: the file stores no split and its config has no 'frac_train'")
        try:
            frac = float(cfg["frac_train"])
        except (TypeError, ValueError):
            raise RunError(f"{src}: config['frac_train'] must be a number, got {cfg['frac_train']!r}") from None
        if not 0 < frac < 1:
            raise RunError(f"{src}: config['frac_train'] = {frac} must lie in (0, 1)")
        trn, tst = paper_split(p, frac, seed)
        split_note = (f"derived from seed {seed} as the paper's code does (random.seed({seed}); random.shuffle "
                      f"over the row-major (a, b) list; the first int(frac_train·p²) = {len(trn)} pairs train)")
    if len(trn) == 0 or len(tst) == 0:
        raise RunError(f"{src}: the split has an empty train or test set")

    def num(key: str, default: float, *alts: str) -> float:
        for k in (key, *alts):
            if k in cfg:
                try:
                    return float(cfg[k])
                except (TypeError, ValueError):
                    raise RunError(f"{src}: config[{k!r}] must be a number, got {cfg[k]!r}") from None
        notes.append(f"{key} not recorded in the file: {default} (the reference default) assumed")
        return default

    every = _as_int(cfg.get("save_every", cfg.get("checkpoint_every", 0)) or 0, "save_every", src)
    if every <= 0:
        every = (epochs[1] - epochs[0]) if len(epochs) > 1 else max(E, 1)
    try:
        config = RunConfig(
            task=TaskConfig(p=p, operation=operation, frac_train=min(max(frac, 1e-9), 1 - 1e-9), split_seed=seed),
            model=ModelConfig(p=p, d_model=dims["d_model"], n_heads=dims["n_heads"], d_mlp=dims["d_mlp"],
                              n_layers=dims["n_layers"], act_fn=_ACT[act],
                              init_seed=_as_int(cfg.get("seed", 0) or 0, "config seed", src)),
            train=TrainConfig(epochs=E, lr=num("lr", 1e-3), weight_decay=num("weight_decay", 1.0, "wd"),
                              beta1=0.9, beta2=0.98, warmup_epochs=warmup, eval_every=1, device="cpu"),
            checkpoints=CheckpointSchedule(every=max(every, 1), flush_every=max(1, min(50, len(epochs)))),
        )
    except ConfigError as e:
        raise RunError(f"{src}: the file's config does not make a grokinterp run: {e}") from None
    mc = config.model

    # -- convert every checkpoint (all checked before anything is written) -------------------------
    converted = []
    for e, sd in ckpts:
        what = f"checkpoint at epoch {e}"
        if found == "paper":
            params, W_U_full = _paper_params(sd, mc, what, src)
        else:
            params, W_U_full = _tl_params(sd, mc, dims["d_vocab_out"], what, src)
        converted.append((e, params, W_U_full))
    if found == "paper" or dims.get("d_vocab_out") == p + 1:
        notes.append("the unembedding's '=' column was dropped (grokinterp predicts residues only); recorded "
                     "losses include it, accuracies here do not")

    # -- metrics: recorded losses, accuracies at checkpoints, and the loss check --------------------
    metrics = {c: np.full(E + 1, np.nan) for c in METRIC_COLUMNS[1:]}
    metrics["train_loss"][tr_off: tr_off + len(train_losses)] = train_losses[: E + 1 - tr_off]
    metrics["test_loss"][te_off: te_off + len(test_losses)] = test_losses[: E + 1 - te_off]
    ds = config.task.task().dataset()
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in (*ds.select(trn), *ds.select(tst)))
    model = HookedGrokTransformer(mc, init=False)
    compared, worst = 0, None
    for e, params, W_U_full in converted:
        model.load_params(params)
        l_tr, a_tr = _evaluate(model, W_U_full, x_tr, y_tr)
        l_te, a_te = _evaluate(model, W_U_full, x_te, y_te)
        metrics["train_acc"][e], metrics["test_acc"][e] = a_tr, a_te
        for kind, rec, ours in (("train_loss", metrics["train_loss"][e], l_tr),
                                ("test_loss", metrics["test_loss"][e], l_te)):
            if math.isfinite(rec) and math.isfinite(ours):
                compared += 1
                rel = float(abs(ours - rec) / max(abs(rec), 1e-12))
                if worst is None or rel > worst["rel_diff"]:
                    worst = {"epoch": e, "metric": kind, "recorded": float(rec), "recomputed": float(ours),
                             "rel_diff": rel}
    check = {"compared": compared, "rtol": _LOSS_RTOL,
             "agrees": bool(worst is None or worst["rel_diff"] <= _LOSS_RTOL), "worst": worst}
    if not compared:
        notes.append("no recorded loss at a checkpoint epoch: the split and epoch convention were not checked")
    elif not check["agrees"]:
        w = worst
        warnings.warn(f"{src}: the {w['metric']} recomputed from the imported weights at epoch {w['epoch']} is "
                      f"{w['recomputed']:.6g}, the file recorded {w['recorded']:.6g}: the split ({split_note}) or "
                      f"the epoch offset ({epoch_offset}) may be wrong", RunWarning, stacklevel=2)

    # -- write into a temporary sibling, then rename: an interrupted import leaves nothing --------
    digest, size = _io.sha256_file(src), src.stat().st_size
    info = run_metadata(config, torch.device("cpu"), None, len(trn), len(tst))
    info["device"]["name"] = "unknown (imported)"
    info["imported_from"] = {
        "file": str(src.resolve()), "size": size, "sha256": digest, "layout": found,
        "epoch_offset": epoch_offset, "split": split_note, "loss_check": check, "notes": notes,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent))
    try:
        start_run(tmp, info, trn, tst)
        writer = CheckpointWriter(tmp, param_shapes(mc), config.checkpoints.flush_every, torch.device("cpu"))
        for e, params, _ in converted:
            writer.snapshot(e, params)
            if writer.full:
                writer.write_shard()
        if writer.epochs:
            writer.write_shard()
        writer.write_metrics(metrics, E + 1)
        progress = {"epoch": E, "epochs_total": E, "finished": True, "checkpoints_written": len(converted),
                    "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "imported": True}
        writer.write_progress(progress)
        writer.write_manifest()
        if out.exists():
            if overwrite and _io.looks_like_run(out):
                from .lock import acquire

                with acquire(out, "import-legacy"):  # never replace a run another process is writing
                    shutil.rmtree(out)
                    os.replace(tmp, out)
            else:
                out.rmdir()  # empty (checked above)
                os.replace(tmp, out)
        else:
            os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"{out}: cannot write the imported run ({e.strerror or e})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_run(out)


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise RunError(f"{out}: exists and is not a directory")
    if any(out.iterdir()):
        if overwrite and _io.looks_like_run(out):
            from .lock import holder

            h = holder(out)
            if h is not None and h.alive is not False:
                raise RunError(f"{out}: the run there is being written by {h.describe()}; refusing to replace it")
            return
        raise RunError(f"{out}: directory is not empty; choose another output directory"
                       + ("" if overwrite else " (or pass --overwrite to replace a run)"))
