"""Import checkpoints of the reference implementations into a run directory, without unpickling code.

Files are read with ``torch.load(path, weights_only=True)`` only: tensors, lists, dicts, numbers
and strings come back, and a file that needs any other object (a class, a function) is refused
with a message naming it. The one exception is the TransformerLens config object of the grokking
demo: its pickled ``HookedTransformerConfig`` is mapped onto a stand-in that keeps the field
values and runs none of the file's code (through torch's allow-list of safe globals).

Two parameter layouts are understood, told apart by the shapes of the parameters (the keys are
the same in both; :func:`param_layout`):

``paper``
    Nanda et al.'s code: ``W_E [d_model, d_vocab]``, ``W_U [d_model, d_vocab_out]``,
    ``W_K/W_Q/W_V [n_heads, d_head, d_model]``, ``W_O [d_model, n_heads·d_head]`` (head-major),
    ``W_in [d_mlp, d_model]``, ``W_out [d_model, d_mlp]``, and an attention ``mask`` buffer
    (dropped). Parameters are transposed into ours. Two containers hold them:

    * ``full_run_data.pth``: ``state_dicts`` (list), ``epochs`` (list), ``train_losses``,
      ``test_losses`` (one per epoch) and ``config`` (a dict: ``p``, ``frac_train``, ``d_model``,
      ``lr``, ``weight_decay``, ``seed``, ``fn_name``, ...);
    * the repository's ``saved_runs/*.pth``: one final state dict under ``model``, ``train_losses``
      (one per epoch), ``test_losses`` (one per epoch, or one every 10 epochs), and some of:
      ``config`` (often partial), ``optimizer`` and ``scheduler`` state, ``epoch``.
``tl-demo``
    The TransformerLens grokking demo's ``.pth``: ``model`` (final state dict), ``config``,
    ``checkpoints`` (list of state dicts), ``checkpoint_epochs``, ``train_losses``,
    ``test_losses``, ``train_indices``, ``test_indices``. Parameter names and shapes are already
    ours; ``b_Q/b_K/b_V/b_O`` and ``unembed.b_U`` are dropped when they are zero (the demo freezes
    them at zero) and refused otherwise; ``mask`` / ``IGNORE`` buffers are dropped.

Conventions of the import (all recorded under ``imported_from`` in ``run.json``):

- **Vocabulary.** ``p`` is the config's when it records one, else read off the shapes: ``W_E``
  has ``p + 1`` tokens (the residues and ``=``). ``W_U`` must have ``p`` outputs or ``p + 1``
  (an output logit for ``=``, as the paper's code has): the latter is kept (``eq_logit``), so the
  imported model computes the file's logits and losses exactly. Any other shape is refused; ``p``
  is never guessed.
- **Epochs.** Both reference loops save a state dict *after* the optimizer step of the epoch
  they label it with, so the checkpoint labelled ``e`` is our epoch ``e + 1`` (the model after
  ``e + 1`` steps); ``epoch_offset`` changes this. A single final model is at the number of steps
  taken: the scheduler's ``last_epoch``, else one recorded train loss per step, else its ``epoch``
  label plus ``epoch_offset`` (disagreements are noted). Train losses (and the paper's test losses)
  are computed before the step: index ``i`` is our epoch ``i`` (``k·i`` for a test curve recorded
  every ``k`` epochs); the demo computes test losses after the step: index ``i`` is our epoch ``i + 1``.
- **Split.** The demo stores its split (``train_indices``: rows ``a·p + b``), used as is. The paper's
  code does not store it: it derives it from ``config["seed"]`` with Python's ``random``
  (``random.seed(seed); random.shuffle(pairs)`` over the row-major ``(a, b)`` list, the first
  ``int(frac_train·p²)`` pairs train): the ``paper`` split method of :mod:`grokinterp.tasks`,
  replayed (``split_seed`` / ``frac_train`` override the config, and are required when it lacks
  them). It is then checked (``loss_check``): the losses recomputed from the imported weights on
  the derived split must match the recorded ones at checkpoint epochs (``kind: exact``, relative
  1e-3); a file holding only its final model has no loss recorded at its epoch, so its train loss
  is compared with the one recorded a step earlier, within a factor 2 (``kind: adjacent``; said to
  be ``inconclusive`` when the model's train and test losses are alike). A mismatch raises a
  :class:`RunWarning`.
- **Training config.** ``train`` records the reference hyper-parameters as metadata: ``lr``,
  weight decay and betas from the file's optimizer state when it has one (what was used; a config
  that disagrees is noted), else its config; warm-up 10 steps in the paper's style (first step at
  lr 0) for the paper, none for the demo. An imported run holds no optimizer state and is never
  resumed. ``run.epochs`` lists its real checkpoint epochs (the ``checkpoints`` section of its
  config only approximates them).
- **Metrics.** Recorded train/test losses; train/test accuracy at checkpoint epochs, computed from
  the imported weights on the stored split (and the losses there, where none was recorded); ``lr``
  is left empty.

Example:
    >>> run = import_legacy("full_run_data.pth", "checkpoints/paper-import")   # doctest: +SKIP
    >>> run.info["imported_from"]["loss_check"]                                # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import pickle
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
from ..tasks import get_task
from . import layout as _io
from .run import RunWarning, load_run
from .writer import METRIC_COLUMNS, CheckpointWriter, run_metadata, start_run

__all__ = ["import_legacy", "read_legacy", "detect_layout", "param_layout", "LAYOUTS"]

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
#: The loss check one optimizer step apart (a file with only its final model) asks for this factor.
_ADJACENT_FACTOR = 2.0


class _PickledConfig:
    """Stand-in for a config object pickled into a legacy file: keeps its fields, runs no code of it."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) as pickle's BUILD allows
            state = {**(state[0] or {}), **(state[1] or {})}
        self.fields = dict(state) if isinstance(state, dict) else {}


def _open_legacy(path: Path) -> int:
    """A descriptor of ``path`` if it is a regular file (a symlink to one is followed); a FIFO, a device, a
    directory is named for what it is and never opened."""
    if not os.path.lexists(path):
        raise RunError(f"{path}: no such file")
    if not os.path.exists(path):
        raise RunError(f"{path}: no such file (a symbolic link to {os.readlink(path)!r}, which does not exist)")
    try:
        return _io.open_regular(path, None, "the checkpoint file")
    except RunError as e:
        raise RunError(str(e).replace("the checkpoint file is ", "")) from None


def _check_records(f: Any, path: Path) -> None:
    """Refuse, from the zip's central directory and before reading any record, a torch file whose records
    would be inflated (torch.save stores them as they are: a compressed record is how a small file asks for
    much memory, 1 GiB from a few MB) or that declares more bytes than it holds. A pre-zip torch file passes."""
    import zipfile

    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    magic = f.read(4)
    f.seek(0)
    if magic != b"PK\x03\x04":  # torch's own test for its zip format; an older torch file is read as it is
        return
    try:
        infos = zipfile.ZipFile(f).infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise RunError(f"{path}: cannot read as a torch checkpoint (damaged zip directory: {e})") from None
    finally:
        f.seek(0)
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise RunError(f"{path}: record {info.filename!r} is compressed (zip method {info.compress_type}, "
                           f"{info.compress_size} bytes declared to inflate to {info.file_size}); torch.save never "
                           f"compresses, so this is not a file torch wrote: refused without inflating it")
        if info.file_size != info.compress_size:
            raise RunError(f"{path}: record {info.filename!r} declares {info.file_size} bytes but stores "
                           f"{info.compress_size}: a damaged file")
    total = sum(info.file_size for info in infos)
    if total > size:
        raise RunError(f"{path}: its records declare {total} bytes in all, more than the file's {size} bytes "
                       f"(records overlap): a damaged file")


def read_legacy(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; refusals become :class:`RunError`.

    Only a regular file is read (a FIFO or a device is refused as such), and a zip record that
    would be inflated, or sizes the file cannot hold, are refused before any record is read.
    """
    path = Path(path)
    allowed = [(_PickledConfig, name) for name in _TL_CONFIG_NAMES]
    try:
        with os.fdopen(_open_legacy(path), "rb") as f:
            _check_records(f, path)
            with torch.serialization.safe_globals(allowed):
                return torch.load(f, map_location="cpu", weights_only=True)
    except RunError:
        raise
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


def param_layout(sd: dict[str, Tensor], what: str, where: Path) -> str:
    """``paper`` or ``tl-demo``: the parameter layout of a state dict, told apart by shapes.

    Both layouts use the same keys. The paper's code stores ``embed.W_E [d_model, d_vocab]`` and
    ``W_O [d_model, n_heads·d_head]`` (two dimensions); TransformerLens stores ``W_E [d_vocab,
    d_model]`` and ``W_O [n_heads, d_head, d_model]``. ``d_model`` is read off ``pos_embed.W_pos
    [n_ctx, d_model]``, so a model whose vocabulary equals its width is still recognised.
    """
    need = ("embed.W_E", "pos_embed.W_pos", "blocks.0.attn.W_O")
    missing = [k for k in need if not isinstance(sd.get(k), Tensor)]
    if missing:
        raise RunError(f"{where}: {what}: no {', '.join(missing)} (keys: {sorted(sd)[:8]}); grokinterp imports "
                       f"one-layer [a, b, =] transformers in the paper's or the TransformerLens demo's layout")
    W_E, W_pos, W_O = (sd[k] for k in need)
    if W_E.ndim == 2 and W_pos.ndim == 2:
        d_model = W_pos.shape[1]
        if W_O.ndim == 2 and W_E.shape[0] == d_model and W_O.shape[0] == d_model:
            return "paper"
        if W_O.ndim == 3 and W_E.shape[1] == d_model and W_O.shape[2] == d_model:
            return "tl-demo"
    raise RunError(f"{where}: {what}: cannot tell the layout from the shapes embed.W_E {list(W_E.shape)}, "
                   f"pos_embed.W_pos {list(W_pos.shape)}, blocks.0.attn.W_O {list(W_O.shape)} (expected the paper's "
                   f"[d_model, d_vocab] / [d_model, n_heads·d_head] or TransformerLens' [d_vocab, d_model] / "
                   f"[n_heads, d_head, d_model])")


def _vocabulary(d_vocab: int, n_out: int, cfg_p: Any, where: Path, notes: list[str]) -> tuple[int, bool]:
    """``(p, eq_logit)`` from the embedding's token count and the unembedding's output count.

    ``p`` comes from the config when it has one; otherwise from the shapes: the input vocabulary is
    the ``p`` residues and ``=``, so ``p = d_vocab - 1``. The unembedding has ``p`` outputs, or
    ``p + 1`` when ``=`` has an output logit. Any other count is refused: ``p`` is never guessed.
    """
    if cfg_p is not None:
        p = _as_int(cfg_p, "config p", where)
        if d_vocab != p + 1:
            raise RunError(f"{where}: config p = {p} but embed.W_E has {d_vocab} tokens; grokinterp's model has p + 1 "
                           f"(the residues and '='). (The paper code's class-body default d_vocab = 114 does not "
                           f"follow a changed p.)")
    else:
        p = d_vocab - 1
        notes.append(f"the file records no p: p = {p} read off the shapes (embed.W_E has p + 1 = {d_vocab} tokens, "
                     f"the residues and '=')")
    if n_out not in (p, p + 1):
        raise RunError(f"{where}: unembed.W_U has {n_out} outputs, expected p = {p} or p + 1 = {p + 1} (with an "
                       f"output logit for '='); is this an [a, b, =] model mod p?")
    return p, n_out == p + 1


def _paper_dims(sd: dict[str, Tensor], cfg: dict[str, Any], where: Path, notes: list[str]) -> dict[str, int]:
    _require_ndim(sd, {"embed.W_E": 2, "blocks.0.attn.W_Q": 3, "blocks.0.mlp.W_in": 2, "unembed.W_U": 2},
                  "the model", where)
    d_model, d_vocab = sd["embed.W_E"].shape
    n_heads, d_head, _ = sd["blocks.0.attn.W_Q"].shape
    p, eq_logit = _vocabulary(d_vocab, sd["unembed.W_U"].shape[1], cfg.get("p"), where, notes)
    dims = {"p": p, "eq_logit": eq_logit, "d_model": d_model, "n_heads": n_heads, "d_head": d_head,
            "d_mlp": sd["blocks.0.mlp.W_in"].shape[0], "n_layers": _n_layers(sd)}
    for ours, theirs in (("d_model", "d_model"), ("n_heads", "num_heads"), ("d_mlp", "d_mlp"),
                         ("n_layers", "num_layers")):
        if theirs in cfg and _as_int(cfg[theirs], f"config[{theirs!r}]", where) != dims[ours]:
            raise RunError(f"{where}: config[{theirs!r}] = {cfg[theirs]} but the weights have {ours} = {dims[ours]}")
    return dims


def _paper_params(sd: dict[str, Tensor], mc: ModelConfig, what: str, where: Path) -> dict[str, Tensor]:
    """Our parameters from a state dict in the paper code's layout (transposed; ``mask`` dropped)."""
    h, e, d, m, V = mc.n_heads, mc.d_head, mc.d_model, mc.d_mlp, mc.d_vocab
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> Tensor:
        used.add(key)
        return _tensor(sd, key, shape, what, where)

    W_pos = sd.get("pos_embed.W_pos")
    n_pos = W_pos.shape[0] if isinstance(W_pos, Tensor) and W_pos.ndim == 2 else mc.n_ctx
    if n_pos != mc.n_ctx:
        raise RunError(f"{where}: {what}: pos_embed.W_pos has {n_pos} positions; an [a, b, =] model has {mc.n_ctx}")
    out = {
        "embed.W_E": take("embed.W_E", (d, V)).T.contiguous(),
        "pos_embed.W_pos": take("pos_embed.W_pos", (n_pos, d)).contiguous(),
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
    out["unembed.W_U"] = take("unembed.W_U", (d, mc.d_vocab_out)).contiguous()
    _refuse_extra(sd, used, what, where)
    return out


def _tl_dims(sd: dict[str, Tensor], cfg: dict[str, Any], where: Path, notes: list[str]) -> dict[str, int]:
    _require_ndim(sd, {"embed.W_E": 2, "blocks.0.attn.W_Q": 3, "blocks.0.mlp.W_in": 2, "unembed.W_U": 2},
                  "first checkpoint", where)
    d_vocab, d_model = sd["embed.W_E"].shape
    n_heads, _, d_head = sd["blocks.0.attn.W_Q"].shape
    dims = {"d_model": d_model, "n_heads": n_heads, "d_head": d_head,
            "d_mlp": sd["blocks.0.mlp.W_in"].shape[1], "n_layers": _n_layers(sd)}
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
    dims["p"], dims["eq_logit"] = _vocabulary(d_vocab, sd["unembed.W_U"].shape[1], None, where, [])
    return dims


def _tl_params(sd: dict[str, Tensor], mc: ModelConfig, what: str, where: Path) -> dict[str, Tensor]:
    used: set[str] = set()
    out = {}
    for name, shape in param_shapes(mc).items():
        used.add(name)
        out[name] = _tensor(sd, name, shape, what, where)
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
    return out


# -- split ----------------------------------------------------------------------------------------
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
def _evaluate(model: HookedGrokTransformer, tokens: Tensor, labels: Tensor) -> tuple[float, float]:
    """Cross-entropy (float64 log-softmax over every output the model has, ``=`` included when it has
    one, as the reference code's loss) and accuracy (argmax over the same outputs)."""
    if len(labels) == 0:
        return math.nan, math.nan
    logits = model(tokens)[:, -1]
    loss = F.cross_entropy(logits.double(), labels).item()
    acc = (logits.argmax(-1) == labels).double().mean().item()
    return loss, acc


# -- import ---------------------------------------------------------------------------------------
_LOSS_KEYS = ("train_losses", "test_losses", "losses", "train_loss", "test_loss")


def _container(obj: Any, where: Path) -> str:
    """Where the checkpoints are in the file: ``state_dicts`` (the paper's ``full_run_data.pth``),
    ``checkpoints`` (the TransformerLens demo) or ``model`` (one final state dict: the paper
    repository's ``saved_runs/*.pth``, or a demo file without its checkpoint list)."""
    if not isinstance(obj, Mapping):
        raise RunError(f"{where}: expected a dict of checkpoints, got {type(obj).__name__} (a file of loss curves "
                       f"only holds no model to import)")
    for key in ("state_dicts", "checkpoints", "model"):
        if key in obj:
            return key
    keys = sorted(map(str, obj))[:10]
    if any(k in obj for k in _LOSS_KEYS):
        raise RunError(f"{where}: holds loss curves but no model (keys {keys}): nothing to import")
    raise RunError(f"{where}: unknown layout (keys {keys}); expected the paper's 'state_dicts'/'epochs' or 'model', "
                   f"or the TransformerLens demo's 'model'/'checkpoints'")


def detect_layout(obj: Any, where: Path) -> str:
    """``paper`` or ``tl-demo``: the parameter layout of a legacy file's first state dict (by shapes)."""
    container = _container(obj, where)
    first = obj[container]
    if isinstance(first, (list, tuple)):
        first = first[0] if first else obj.get("model")
    if not isinstance(first, Mapping):
        raise RunError(f"{where}: {container!r} holds no state dict")
    return param_layout(dict(first), container, where)


def _optimizer_group(obj: Mapping, where: Path) -> dict[str, Any]:
    opt = obj.get("optimizer")
    if isinstance(opt, Mapping) and isinstance(opt.get("param_groups"), (list, tuple)) and opt["param_groups"] \
            and isinstance(opt["param_groups"][0], Mapping):
        return dict(opt["param_groups"][0])
    return {}


def _hyper(cfg: dict[str, Any], group: dict[str, Any], where: Path, notes: list[str]) -> dict[str, float]:
    """lr, weight decay and betas: the optimizer state's (what was used) over the config's."""
    def number(x: Any, what: str) -> float:
        try:
            v = float(x.item() if isinstance(x, Tensor) else x)
        except (TypeError, ValueError, RuntimeError):
            raise RunError(f"{where}: {what} must be a number, got {x!r}") from None
        if not math.isfinite(v):
            raise RunError(f"{where}: {what} must be finite, got {v}")
        return v

    out = {}
    for key, group_key, cfg_keys, default in (("lr", "initial_lr", ("lr",), 1e-3),
                                              ("weight_decay", "weight_decay", ("weight_decay", "wd"), 1.0)):
        from_cfg = next((number(cfg[k], f"config[{k!r}]") for k in cfg_keys if cfg.get(k) is not None), None)
        gk = group_key if group_key in group else key
        from_opt = number(group[gk], f"optimizer param_groups[0][{gk!r}]") if gk in group else None
        if from_opt is not None:
            out[key] = from_opt
            if from_cfg is not None and not math.isclose(from_opt, from_cfg, rel_tol=1e-9):
                notes.append(f"config {key} = {from_cfg:g} but the optimizer state says {from_opt:g}: the optimizer's "
                             f"value is recorded (it is what training used)")
        elif from_cfg is not None:
            out[key] = from_cfg
        else:
            out[key] = default
            notes.append(f"{key} not recorded in the file: {default} (the reference default) assumed")
    betas = group.get("betas", (0.9, 0.98))
    try:
        out["beta1"], out["beta2"] = (number(b, "optimizer betas") for b in betas)
    except (TypeError, ValueError):
        raise RunError(f"{where}: optimizer betas must be two numbers, got {betas!r}") from None
    return out


def _final_epoch(obj: Mapping, n_train: int, epoch_offset: int, where: Path, notes: list[str]) -> int:
    """Our epoch (steps taken) of a file's single final model: the scheduler's step count, else one
    recorded train loss per step, else the ``epoch`` label plus ``epoch_offset``."""
    found: list[tuple[str, int]] = []
    sched = obj.get("scheduler")
    if isinstance(sched, Mapping) and sched.get("last_epoch") is not None:
        found.append(("scheduler.last_epoch (steps taken)", _as_int(sched["last_epoch"], "scheduler last_epoch", where)))
    if n_train:
        found.append(("len(train_losses) (one loss per step, before it)", n_train))
    if obj.get("epoch") is not None:
        found.append((f"'epoch' + epoch_offset {epoch_offset}", _as_int(obj["epoch"], "'epoch'", where) + epoch_offset))
    if not found:
        raise RunError(f"{where}: cannot tell the epoch of the model under 'model': the file has no scheduler, "
                       f"train_losses or epoch")
    if len({v for _, v in found}) > 1:
        notes.append("the final model's epoch: " + ", ".join(f"{k} = {v}" for k, v in found) + f"; {found[0][1]} used")
    if found[0][1] < 0:
        raise RunError(f"{where}: the final model's epoch is negative ({found[0][1]})")
    return found[0][1]


def _curve_stride(n_values: int, n_train: int, name: str, where: Path, notes: list[str]) -> int | None:
    """Epochs between consecutive recorded values of a curve sparser than the train losses (the
    paper's code records the test loss every 10 epochs in some runs); ``None`` if irregular."""
    if n_values == 0 or n_train == 0 or n_values >= n_train:
        return 1
    k = max(1, round(n_train / n_values))
    if math.ceil(n_train / k) == n_values:
        notes.append(f"{name}: {n_values} values for {n_train} epochs: one every {k} epochs (epochs 0, {k}, {2 * k}, ...)")
        return k
    warnings.warn(f"{where}: {name} has {n_values} values for {n_train} epochs, no regular spacing: not imported",
                  RunWarning, stacklevel=3)
    notes.append(f"{name}: {n_values} values for {n_train} epochs, no regular spacing: not imported")
    return None


def import_legacy(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = "auto",
    split_seed: int | None = None,
    frac_train: float | None = None,
    epoch_offset: int = 1,
    overwrite: bool = False,
):
    """Import a reference implementation's checkpoint file into a new run directory.

    Args:
        path: a ``.pth`` file in the ``paper`` or ``tl-demo`` layout (module notes).
        out: the run directory to create (must not exist, or be empty; ``overwrite`` replaces a run).
        layout: ``auto`` (told by the parameter shapes), ``paper`` or ``tl-demo``.
        split_seed: seed of the paper code's split derivation (default: ``config["seed"]``); needed
            when the file records neither a split nor a seed.
        frac_train: training fraction of the paper code's split (default: ``config["frac_train"]``);
            needed when the file records neither a split nor a training fraction.
        epoch_offset: our epoch of the checkpoint labelled ``e`` is ``e + epoch_offset`` (1: saved
            after the optimizer step, as both reference loops do).
        overwrite: replace an existing run in ``out``.

    Returns:
        The loaded :class:`~grokinterp.store.run.Run`; ``run.info["imported_from"]`` says where it came
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
    if frac_train is not None and (isinstance(frac_train, bool) or not isinstance(frac_train, (int, float))
                                   or not 0 < frac_train < 1):
        raise ConfigError(f"frac_train: must be a number in (0, 1), got {frac_train!r}")
    _check_out(out, overwrite)
    obj = read_legacy(src)
    container = _container(obj, src)
    cfg = _config_fields(obj.get("config"), src)
    notes: list[str] = []

    # -- checkpoints and their layout ---------------------------------------------------------------
    final = None
    if container == "state_dicts":
        sds = obj["state_dicts"]
        if not isinstance(sds, (list, tuple)) or not sds:
            raise RunError(f"{src}: 'state_dicts' must be a non-empty list of state dicts")
        labels = _int_list(obj.get("epochs"), "'epochs'", src)
        if len(labels) != len(sds):
            raise RunError(f"{src}: {len(sds)} state dicts but {len(labels)} epochs")
        sds = [_state_dict(sd, f"state_dicts[{i}]", src) for i, sd in enumerate(sds)]
    else:
        sds = list(obj.get("checkpoints") or []) if container == "checkpoints" else []
        labels = _int_list(obj.get("checkpoint_epochs", []), "'checkpoint_epochs'", src) if sds else []
        if len(labels) != len(sds):
            raise RunError(f"{src}: {len(sds)} checkpoints but {len(labels)} checkpoint_epochs")
        sds = [_state_dict(sd, f"checkpoints[{i}]", src) for i, sd in enumerate(sds)]
        if obj.get("model") is not None:
            final = _state_dict(obj["model"], "'model'", src)
        if not sds and final is None:
            raise RunError(f"{src}: neither 'checkpoints' nor 'model' holds a state dict")
    first = sds[0] if sds else final
    found = param_layout(first, "the first state dict", src)
    if layout != "auto" and layout != found:
        raise RunError(f"{src}: the parameter shapes are the {found!r} layout, not {layout!r}")

    train_losses = _float_list(obj.get("train_losses"), "'train_losses'", src)
    test_losses = _float_list(obj.get("test_losses"), "'test_losses'", src)
    if found == "paper":
        dims = _paper_dims(first, cfg, src, notes)
        if cfg.get("use_ln"):
            raise RunError(f"{src}: config['use_ln'] is true; grokinterp's model has no LayerNorm")
        fn = cfg.get("fn_name", "add")
        if fn not in _PAPER_OPS:
            raise RunError(f"{src}: config['fn_name'] = {fn!r} is not supported (known: {sorted(_PAPER_OPS)})")
        operation = _PAPER_OPS[fn]
        if "fn_name" not in cfg:
            notes.append("config has no fn_name: 'add' assumed (the reference code's default)")
        act = str(cfg.get("act_type", "ReLU")).lower()
        # Both recorded before the step: index i is our epoch i. LambdaLR(min(step / 10, 1)) warm-up.
        tr_off, te_off, warmup, style = 0, 0, 10, "paper"
    else:
        dims = _tl_dims(first, cfg, src, notes)
        operation = "add"
        notes.append("the TransformerLens demo trains a + b mod p: operation 'add' assumed")
        act = str(cfg.get("act_fn", "relu")).lower()
        tr_off, te_off, warmup, style = 0, 1, 0, "default"
    if act not in _ACT:
        raise RunError(f"{src}: activation {act!r} is not supported (relu or gelu)")
    p = dims["p"]
    if dims["d_head"] * dims["n_heads"] != dims["d_model"]:
        raise RunError(f"{src}: d_head × n_heads = {dims['d_head']}×{dims['n_heads']} ≠ d_model {dims['d_model']}; "
                       f"grokinterp's model needs d_head = d_model / n_heads")

    # -- epochs ---------------------------------------------------------------------------------------
    ckpts = [(e + epoch_offset, sd) for e, sd in zip(labels, sds)]
    if final is not None:
        if container == "model" and found == "paper":
            final_epoch = _final_epoch(obj, len(train_losses), epoch_offset, src, notes)
        else:  # the demo saves its final model after its last step; one train loss per step
            final_epoch = max(len(train_losses), max((e for e, _ in ckpts), default=0))
        if not any(e == final_epoch for e, _ in ckpts):
            ckpts.append((final_epoch, final))
    ckpts.sort(key=lambda x: x[0])
    epochs = [e for e, _ in ckpts]
    if len(set(epochs)) != len(epochs) or (epochs and epochs[0] < 0):
        raise RunError(f"{src}: checkpoint epochs repeat or are negative: {epochs[:10]}")
    stride = _curve_stride(len(test_losses), len(train_losses), "test_losses", src, notes)
    if stride is None:
        test_losses = np.zeros(0)
        stride = 1
    E = max([epochs[-1], len(train_losses) - 1 + tr_off, te_off + stride * (len(test_losses) - 1), 0])

    # -- split ------------------------------------------------------------------------------------
    stored = _stored_split(obj, p, src)
    seed_cfg = cfg.get("seed")
    if stored is not None:
        trn, tst = stored
        split_note = "stored in the file (train_indices / test_indices, rows a·p + b)"
        seed = split_seed if split_seed is not None else _as_int(seed_cfg or 0, "config seed", src)
        frac = len(trn) / (p * p)
        method = "random"
    else:
        seed = split_seed if split_seed is not None else seed_cfg
        if seed is None:
            need = "split_seed (--split-seed N)" + ("" if frac_train is not None or "frac_train" in cfg
                                                    else " and frac_train (--frac-train X)")
            raise RunError(f"{src}: the file stores no split and its config has no 'seed' to derive it from; pass "
                           f"{need} (the reference code's defaults: seed 0, frac_train 0.3; the loss check then "
                           f"tells whether they reproduce the recorded losses)")
        seed = _as_int(seed, "config['seed']", src)
        if frac_train is not None:
            frac = float(frac_train)
        elif "frac_train" in cfg:
            try:
                frac = float(cfg["frac_train"])
            except (TypeError, ValueError):
                raise RunError(f"{src}: config['frac_train'] must be a number, got {cfg['frac_train']!r}") from None
        else:
            raise RunError(f"{src}: the file stores no split and its config has no 'frac_train'; pass frac_train "
                           f"(--frac-train X; the reference code's default is 0.3)")
        if not 0 < frac < 1:
            raise RunError(f"{src}: config['frac_train'] = {frac} must lie in (0, 1)")
        try:
            trn, tst = get_task(operation, p).split(frac, seed, "paper")
        except ConfigError as e:
            raise RunError(f"{src}: {e}") from None
        given = [k for k, v in (("seed", split_seed), ("frac_train", frac_train)) if v is not None]
        split_note = (f"derived from seed {seed} as the paper's code does (random.seed({seed}); random.shuffle "
                      f"over the row-major (a, b) list; the first int(frac_train·p²) = {len(trn)} pairs train)"
                      + (f"; {' and '.join(given)} given by the caller" if given else ""))
        method = "paper"

    hyper = _hyper(cfg, _optimizer_group(obj, src), src, notes)
    if "optimizer" in obj or "scheduler" in obj:
        notes.append("the file's optimizer and scheduler state is not imported (imported runs are never resumed)")
    every = _as_int(cfg.get("save_every", cfg.get("checkpoint_every", 0)) or 0, "save_every", src)
    if every <= 0:
        every = (epochs[1] - epochs[0]) if len(epochs) > 1 else max(E, 1)
    try:
        config = RunConfig(
            task=TaskConfig(p=p, operation=operation, frac_train=min(max(frac, 1e-9), 1 - 1e-9), split_seed=seed,
                            split_method=method, eq_logit=dims["eq_logit"]),
            model=ModelConfig(p=p, eq_logit=dims["eq_logit"], d_model=dims["d_model"], n_heads=dims["n_heads"],
                              d_mlp=dims["d_mlp"], n_layers=dims["n_layers"], act_fn=_ACT[act],
                              init_seed=_as_int(seed_cfg or 0, "config seed", src),
                              init_method="paper" if found == "paper" else "default"),
            train=TrainConfig(epochs=E, lr=hyper["lr"], weight_decay=hyper["weight_decay"], beta1=hyper["beta1"],
                              beta2=hyper["beta2"], warmup_epochs=warmup, warmup_style=style, eval_every=1,
                              device="cpu"),
            checkpoints=CheckpointSchedule(every=max(every, 1), flush_every=max(1, min(50, len(epochs)))),
        )
    except ConfigError as e:
        raise RunError(f"{src}: the file's config does not make a grokinterp run: {e}") from None
    mc = config.model

    # -- convert every checkpoint (all checked before anything is written) -------------------------
    converted = []
    for e, sd in ckpts:
        what = f"checkpoint at epoch {e}"
        if param_layout(sd, what, src) != found:
            raise RunError(f"{src}: {what} is not in the {found!r} layout of the first state dict")
        params = _paper_params(sd, mc, what, src) if found == "paper" else _tl_params(sd, mc, what, src)
        converted.append((e, params))
    if dims["eq_logit"]:
        notes.append(f"'=' has an output logit (unembed.W_U has p + 1 = {p + 1} outputs): kept, so the model and "
                     f"its losses are the file's (analyses use the {p} residue logits)")

    # -- metrics: recorded losses, accuracies at checkpoints, and the loss check --------------------
    metrics = {c: np.full(E + 1, np.nan) for c in METRIC_COLUMNS[1:]}
    metrics["train_loss"][tr_off: tr_off + len(train_losses)] = train_losses[: E + 1 - tr_off]
    te_epochs = te_off + stride * np.arange(len(test_losses))
    keep = te_epochs <= E
    metrics["test_loss"][te_epochs[keep]] = test_losses[keep]
    recorded = {c: metrics[c].copy() for c in ("train_loss", "test_loss")}
    ds = config.task.task().dataset()
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(a) for a in (*ds.select(trn), *ds.select(tst)))
    model = HookedGrokTransformer(mc, init=False)
    compared, worst, filled = 0, None, 0
    recomputed: dict[int, dict[str, float]] = {}
    for e, params in converted:
        model.load_params(params)
        l_tr, a_tr = _evaluate(model, x_tr, y_tr)
        l_te, a_te = _evaluate(model, x_te, y_te)
        recomputed[e] = {"train_loss": l_tr, "test_loss": l_te}
        metrics["train_acc"][e], metrics["test_acc"][e] = a_tr, a_te
        for kind, ours in (("train_loss", l_tr), ("test_loss", l_te)):
            rec = recorded[kind][e]
            if math.isfinite(rec) and math.isfinite(ours):
                compared += 1
                rel = float(abs(ours - rec) / max(abs(rec), 1e-12))
                if worst is None or rel > worst["rel_diff"]:
                    worst = {"epoch": e, "metric": kind, "recorded": float(rec), "recomputed": float(ours),
                             "rel_diff": rel}
            elif not math.isfinite(rec):  # no recorded value at this checkpoint: the recomputed one
                metrics[kind][e] = ours
                filled += 1
    if filled:
        notes.append(f"{filled} loss value(s) at checkpoint epochs without a recorded one were recomputed from the "
                     f"weights on the split")
    check = {"kind": "exact", "compared": compared, "rtol": _LOSS_RTOL,
             "agrees": bool(worst is None or worst["rel_diff"] <= _LOSS_RTOL), "worst": worst}
    if not compared:
        check = _adjacent_check(recorded["train_loss"], recomputed, notes)
    if check["compared"] and not check["agrees"]:
        w = check["worst"]
        warnings.warn(f"{src}: the {w['metric']} recomputed from the imported weights at epoch {w['epoch']} is "
                      f"{w['recomputed']:.6g}, the file recorded {w['recorded']:.6g}"
                      + (f" at epoch {w['recorded_epoch']}" if "recorded_epoch" in w else "")
                      + f": the split ({split_note}) or the epoch offset ({epoch_offset}) may be wrong",
                      RunWarning, stacklevel=2)

    # -- write into a temporary sibling, then rename: an interrupted import leaves nothing --------
    digest, size = _io.sha256_file(src), src.stat().st_size
    info = run_metadata(config, torch.device("cpu"), None, len(trn), len(tst))
    info["device"].update(name="unknown (imported)", torch_threads=None)  # not trained here
    info["imported_from"] = {
        "file": str(src.resolve()), "size": size, "sha256": digest, "layout": found, "container": container,
        "epoch_offset": epoch_offset, "split": split_note, "loss_check": check, "notes": notes,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.importing-", dir=out.parent))
    try:
        start_run(tmp, info, trn, tst)
        writer = CheckpointWriter(tmp, param_shapes(mc), config.checkpoints.flush_every, torch.device("cpu"))
        for e, params in converted:
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


def _adjacent_check(recorded_train: np.ndarray, recomputed: dict[int, dict[str, float]],
                    notes: list[str]) -> dict[str, Any]:
    """The loss check when no loss was recorded at a checkpoint epoch (a file holding only its final
    model, saved after the step that followed the last recorded loss): the train loss recomputed at
    checkpoint epoch ``e`` against the one recorded at ``e - 1``, one optimizer step apart.

    One step changes the loss, so only a factor (:data:`_ADJACENT_FACTOR`, 2) is asked for. That
    catches a wrong split when the model's test loss is well above its train loss: a wrong split's
    "train" pairs are mostly test pairs (70 % at frac_train 0.3), so its train loss is far higher.
    When the test loss is less than ``factor²`` (4) times the train loss, an agreement proves
    little: the check says it is ``inconclusive``.
    """
    worst, compared, inconclusive = None, 0, False
    for e, losses in sorted(recomputed.items()):
        if e < 1 or e - 1 >= len(recorded_train):
            continue
        rec, ours = float(recorded_train[e - 1]), losses["train_loss"]
        if not (math.isfinite(rec) and math.isfinite(ours)) or rec <= 0 or ours <= 0:
            continue
        compared += 1
        ratio = max(ours / rec, rec / ours)
        te = losses["test_loss"]
        if not (math.isfinite(te) and te > _ADJACENT_FACTOR ** 2 * ours):
            inconclusive = True  # a wrong split's train loss (mostly test pairs) would be as low
        if worst is None or ratio > worst["ratio"]:
            worst = {"epoch": e, "metric": "train_loss", "recorded": rec, "recorded_epoch": e - 1,
                     "recomputed": ours, "ratio": ratio, "rel_diff": abs(ours - rec) / rec}
    agrees = bool(worst is None or worst["ratio"] <= _ADJACENT_FACTOR)
    inconclusive = inconclusive and agrees  # a disagreement is informative either way
    check = {"kind": "adjacent", "compared": compared, "factor": _ADJACENT_FACTOR, "agrees": agrees,
             "worst": worst, "inconclusive": inconclusive}
    if not compared:
        check["kind"] = "none"
        notes.append("no recorded loss at or one step before a checkpoint epoch: the split and epoch convention "
                     "were not checked")
    elif inconclusive:
        notes.append("loss check inconclusive: the model's test loss is less than 4 times its train loss, so a "
                     "wrong split could reproduce the recorded train loss too")
    return check


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
