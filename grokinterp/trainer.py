"""Full-batch AdamW training with dense checkpoints, resumable bit for bit.

Example:
    >>> from grokinterp import make_config, train
    >>> run = train(make_config("tiny"), "checkpoints/tiny")        # doctest: +SKIP
    >>> run.metrics.tail(1)                                           # doctest: +SKIP

Per epoch ``e`` (the model after ``e`` full-batch steps) the loop: snapshots the parameters if
``e`` is a checkpoint epoch, flushes when the buffer is full, then computes the loss on the
training set (final position, log-softmax in float64), records test loss and accuracy every
``eval_every`` epochs, and takes one AdamW step. The final epoch is evaluated and snapshotted
without a step. Metrics stay on the device until a flush needs them (the learning rate, a host
value, is kept on the host). On CUDA the step is captured once as a CUDA graph and replayed
(``GROKINTERP_CUDA_GRAPHS=0`` turns that off): a step is a few hundred small kernels, and
replaying them is ~3.5× faster than launching them one by one from Python.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor

from . import _io
from .checkpoints import METRIC_COLUMNS, CheckpointWriter
from .config import FORMAT_VERSION, RunConfig
from .errors import ConfigError, RunError
from .fastpath import FastPlan, fast_path_unsupported, final_logits
from .model import HookedGrokTransformer, param_shapes
from .tasks import make_dataset, split_pairs

__all__ = ["train", "resume", "TrainingInterrupted", "resolve_device", "split_tensors"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after flushing; ``.run_dir``, ``.epoch`` say where to resume.

    ``.signum`` is the signal that stopped it (the CLI exits with ``128 + signum``).
    """

    def __init__(self, run_dir: Path, epoch: int, signum: int = signal.SIGINT):
        super().__init__(f"training interrupted at epoch {epoch}; everything is saved, resume with "
                         f"`grokinterp train --resume {run_dir}`")
        self.run_dir, self.epoch, self.signum = run_dir, epoch, int(signum)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; explicit devices must exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {device!r} requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device: {device!r} requested but MPS is not available")
    return dev


def split_tensors(config: RunConfig, train_pairs: np.ndarray, test_pairs: np.ndarray):
    """Tokens and labels ``(train_tokens, train_labels, test_tokens, test_labels)`` of a split."""
    ds = make_dataset(config.task.p, config.task.operation)
    pos = np.full(config.task.p ** 2, -1, dtype=np.int64)
    pos[ds.pair_index] = np.arange(len(ds))
    out = []
    for pairs in (train_pairs, test_pairs):
        idx = pos[pairs]
        out += [torch.from_numpy(ds.tokens[idx]), torch.from_numpy(ds.labels[idx])]
    return tuple(out)


@dataclass
class _Data:
    tokens: Tensor
    labels: Tensor
    plan: FastPlan | None


class _Trainer:
    def __init__(self, config: RunConfig, run_dir: Path, device: torch.device, train_pairs, test_pairs):
        self.config, self.run_dir, self.device = config, run_dir, device
        trn_x, trn_y, tst_x, tst_y = split_tensors(config, train_pairs, test_pairs)
        mc = config.model
        use_fast = config.train.fast_path and fast_path_unsupported(mc, trn_x) is None
        self.data = {}
        for name, x, y in (("train", trn_x, trn_y), ("test", tst_x, tst_y)):
            x, y = x.to(device), y.to(device)
            plan = FastPlan.build(mc, x) if use_fast and len(x) else None
            self.data[name] = _Data(x, y, plan)
        self.model = HookedGrokTransformer(mc).to(device)
        self.params = dict(self.model.named_parameters())
        tc = config.train
        kw: dict[str, Any] = {}
        if device.type in ("cpu", "cuda"):
            kw["fused"] = True
        # On CUDA the step of the fast path is replayed from a CUDA graph (see `step`): a step is a
        # few hundred small kernels, and launching them one by one from Python costs ~4× more than
        # the GPU needs to run them. The graph reads the learning rate from a device tensor.
        self.use_graph = device.type == "cuda" and self.data["train"].plan is not None and _graphs_enabled()
        lr: float | Tensor = torch.tensor(tc.lr, device=device) if self.use_graph else tc.lr
        if self.use_graph:
            kw["capturable"] = True
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay, **kw
        )
        self.graph: Any = None  # torch.cuda.CUDAGraph once captured
        self._graph_out: tuple[Tensor, Tensor] | None = None  # its static (logits, loss)
        self._eager_steps = 0
        n = tc.epochs + 1
        # The learning rate is known on the host: its column stays there (writing a host value
        # into a CUDA tensor is a host→device copy that waits for the GPU, at every step).
        self.metrics = {c: torch.full((n,), float("nan"), dtype=torch.float64, device="cpu" if c == "lr" else device)
                        for c in METRIC_COLUMNS[1:]}
        self.ckpt_epochs = set(config.checkpoint_epochs().tolist())
        self.writer = CheckpointWriter(run_dir, param_shapes(mc), config.checkpoints.flush_every, device)
        self.start_epoch = 0
        self.flushed_upto = -1  # last checkpoint epoch already on disk

    # -- forward -----------------------------------------------------------------------------
    def logits(self, data: _Data) -> Tensor:
        if data.plan is not None:
            return final_logits(self.params, data.plan)
        return self.model(data.tokens)[:, -1]

    @torch.no_grad()
    def evaluate(self, data: _Data) -> tuple[Tensor, Tensor]:
        logits = self.logits(data)
        loss = F.cross_entropy(logits.double(), data.labels)
        acc = (logits.argmax(-1) == data.labels).double().mean()
        return loss, acc

    # -- state -------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {f"param/{k}": v.detach() for k, v in self.params.items()}
        names = {id(p): k for k, p in self.params.items()}
        for p, st in self.opt.state.items():
            for key, val in st.items():
                state[f"opt/{names[id(p)]}/{key}"] = val if torch.is_tensor(val) else torch.tensor(val)
        state["rng/torch_cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            state["rng/torch_cuda"] = torch.cuda.get_rng_state(self.device)
        for c, v in self.metrics.items():
            state[f"metrics/{c}"] = v
        return state

    def load_state(self, path: Path) -> None:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:  # SafetensorError is a bare Exception
            raise RunError(f"{path}: cannot read the training state ({e})") from None
        try:
            self.start_epoch = int(meta["resume_epoch"])
            self.flushed_upto = int(meta["flushed_upto"])
        except (KeyError, ValueError):
            raise RunError(f"{path}: training state has no resume epoch in its metadata") from None
        E = self.config.train.epochs
        if not (0 <= self.start_epoch <= E and -1 <= self.flushed_upto <= E):
            raise RunError(f"{path}: resume epoch {self.start_epoch} or flushed epoch {self.flushed_upto} lies "
                           f"outside the run's 0..{E} epochs")
        rng = tensors.get("rng/torch_cpu")
        if rng is None or rng.dtype != torch.uint8 or rng.ndim != 1:
            raise RunError(f"{path}: the CPU random-number state is missing or malformed")
        for key, t in tensors.items():
            if key.startswith("opt/"):
                name, _, slot = key[4:].rpartition("/")
                p = self.params.get(name)
                want = () if slot == "step" else (tuple(p.shape) if p is not None else None)
                if (p is None or slot not in ("step", "exp_avg", "exp_avg_sq") or tuple(t.shape) != want
                        or t.dtype != p.dtype):
                    raise RunError(f"{path}: optimizer state {key!r} does not match the model (shape "
                                   f"{list(t.shape)}, dtype {t.dtype})")
        for name in self.params:
            slots = {k.rpartition("/")[2] for k in tensors if k.startswith(f"opt/{name}/")}
            if slots and slots != {"step", "exp_avg", "exp_avg_sq"}:
                raise RunError(f"{path}: optimizer state of {name} is incomplete (has {sorted(slots)})")
        with torch.no_grad():
            for k, p in self.params.items():
                t = tensors.get(f"param/{k}")
                if t is None or t.shape != p.shape or t.dtype != p.dtype:
                    raise RunError(f"{path}: parameter {k} is missing or has the wrong shape or dtype")
                p.copy_(t)
        opt_state = {}
        for i, k in enumerate(self.params):
            st = {key.split("/")[-1]: t.to(self.device) for key, t in tensors.items()
                  if key.startswith(f"opt/{k}/")}
            if st:
                opt_state[i] = st
        sd = self.opt.state_dict()
        sd["state"] = opt_state
        self.opt.load_state_dict(sd)
        for c in self.metrics:
            t = tensors.get(f"metrics/{c}")
            if t is None or t.shape != self.metrics[c].shape:
                raise RunError(f"{path}: metrics/{c} is missing or has the wrong length")
            self.metrics[c].copy_(t)
        try:
            torch.set_rng_state(rng)
            if self.device.type == "cuda" and "rng/torch_cuda" in tensors:
                torch.cuda.set_rng_state(tensors["rng/torch_cuda"], self.device)
        except (RuntimeError, TypeError, ValueError) as e:
            raise RunError(f"{path}: cannot restore the random-number state ({e})") from None

    def flush(self, resume_epoch: int, finished: bool) -> None:
        if self.writer.epochs:
            self.flushed_upto = self.writer.epochs[-1]
        metrics = {c: v.cpu().numpy() for c, v in self.metrics.items()}
        progress = {
            "epoch": resume_epoch,
            "epochs_total": self.config.train.epochs,
            "finished": finished,
            "checkpoints_written": self.writer.n_written + len(self.writer.epochs),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.writer.flush(
            resume_epoch=resume_epoch, finished=finished, metrics=metrics, state=self.state_tensors(),
            state_meta={"flushed_upto": str(max(self.flushed_upto, self.writer.epochs[-1] if self.writer.epochs else -1)),
                        "format_version": str(FORMAT_VERSION)},
            progress=progress,
        )

    # -- loop --------------------------------------------------------------------------------
    def step(self, epoch: int, record_acc: bool) -> None:
        """One full-batch AdamW step from the model at ``epoch``; records the learning rate and the
        train loss (and, with ``record_acc``, the train accuracy) into the metrics.
        Nothing here waits for the device: no host sync per step (tested on CUDA)."""
        lr = self.config.train.lr_at(epoch)
        for group in self.opt.param_groups:
            if torch.is_tensor(group["lr"]):
                group["lr"].fill_(lr)  # a kernel with the value as argument: no host→device copy
            else:
                group["lr"] = lr
        m = self.metrics
        m["lr"][epoch] = lr
        if self.use_graph:
            logits, loss = self._graph_step()
        else:
            logits, loss = self._eager_step()
        m["train_loss"][epoch] = loss.detach()
        if record_acc:
            m["train_acc"][epoch] = (logits.detach().argmax(-1) == self.data["train"].labels).double().mean()

    def _eager_step(self) -> tuple[Tensor, Tensor]:
        train = self.data["train"]
        logits = self.logits(train)
        loss = F.cross_entropy(logits.double(), train.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return logits, loss

    def _graph_step(self) -> tuple[Tensor, Tensor]:
        """The step on CUDA: a few eager steps on a side stream (CUDA's required warm-up before a
        capture; they are real steps), then one capture, then a replay per step. The replayed
        kernels are those of the eager step, writing into the same parameter, gradient and
        optimizer-state tensors; a capture that fails falls back to eager steps for good."""
        if self.graph is None and self._eager_steps < _GRAPH_WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self._eager_step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._eager_steps += 1
            return out
        if self.graph is None:
            graph = torch.cuda.CUDAGraph()
            try:  # the eager step's kernels; its zero_grad(set_to_none) lets backward write fresh gradients
                with torch.cuda.graph(graph):
                    logits, loss = self._eager_step()
            except RuntimeError as e:  # pragma: no cover - depends on the CUDA build
                import warnings

                warnings.warn(f"CUDA graph capture of the training step failed ({e}); training on with eager "
                              f"steps", RuntimeWarning, stacklevel=2)
                self.use_graph = False
                torch.cuda.synchronize(self.device)
                return self._eager_step()
            self.graph, self._graph_out = graph, (logits.detach(), loss.detach())
        self.graph.replay()
        assert self._graph_out is not None
        return self._graph_out

    def run(self, progress_bar: bool, stop: Callable[[], bool]) -> None:
        tc = self.config.train
        E = tc.epochs
        train, test = self.data["train"], self.data["test"]
        m = self.metrics
        bar = _progress(progress_bar, self.start_epoch, E)
        try:
            for epoch in range(self.start_epoch, E + 1):
                if stop():
                    self.flush(epoch, finished=False)
                    raise TrainingInterrupted(self.run_dir, epoch, getattr(stop, "signum", signal.SIGINT))
                if epoch in self.ckpt_epochs and epoch > self.flushed_upto:
                    self.writer.snapshot(epoch, self.params)
                    if self.writer.full:
                        self.flush(epoch, finished=False)
                evaluating = epoch % tc.eval_every == 0 or epoch == E
                if evaluating and len(test.labels):  # the model at this epoch, before its step
                    m["test_loss"][epoch], m["test_acc"][epoch] = self.evaluate(test)
                if epoch == E:
                    m["train_loss"][epoch], m["train_acc"][epoch] = self.evaluate(train)
                else:
                    self.step(epoch, record_acc=evaluating)
                if bar is not None:
                    bar.update(1)
                    if evaluating:  # the only host sync outside flushes
                        bar.set_postfix(train=f"{m['train_loss'][epoch].item():.2e}",
                                        test=f"{m['test_loss'][epoch].item():.2e}",
                                        acc=f"{m['test_acc'][epoch].item():.3f}", refresh=False)
            self.flush(E, finished=True)
        finally:
            if bar is not None:
                bar.close()


#: Eager steps on CUDA before the training step is captured as a graph.
_GRAPH_WARMUP_STEPS = 3


def _graphs_enabled() -> bool:
    """CUDA graphs for the training step, unless ``GROKINTERP_CUDA_GRAPHS=0``."""
    return os.environ.get("GROKINTERP_CUDA_GRAPHS", "1").strip().lower() not in ("0", "false", "no", "off")


def _progress(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total + 1, initial=start, desc="epoch", unit="ep", dynamic_ncols=True, mininterval=0.5)


@contextmanager
def _sigint_flag() -> Iterator[Callable[[], bool]]:
    """Turn SIGINT (Ctrl-C) and SIGTERM (schedulers stopping a job) into a flag the loop checks
    between steps, so a stop always flushes first (main thread only). The returned callable's
    ``signum`` attribute records which signal arrived."""
    flag = threading.Event()

    def stopped() -> bool:
        return flag.is_set()

    stopped.signum = signal.SIGINT  # type: ignore[attr-defined]
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def handler(signum, frame):
        if flag.is_set() and signum == signal.SIGINT:  # a second Ctrl-C: give up waiting
            raise KeyboardInterrupt
        stopped.signum = signum  # type: ignore[attr-defined]
        flag.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _run_metadata(config: RunConfig, device: torch.device, preset: str | None, n_train: int, n_test: int) -> dict:
    from . import __version__

    info = {
        "kind": _io.RUN_KIND,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "preset": preset,
        "seeds": {"split_seed": config.task.split_seed, "init_seed": config.model.init_seed},
        "n_train": n_train,
        "n_test": n_test,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {
            "grokinterp": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": {"type": device.type, "name": _device_name(device), "torch_threads": torch.get_num_threads()},
    }
    return info


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _check_out_dir(out: Path, config: RunConfig, overwrite: bool) -> str:
    """``new``, ``same`` (the same config is already there) or raise; ``overwrite`` clears a run."""
    if not out.exists():
        return "new"
    if not out.is_dir():
        raise RunError(f"{out}: exists and is not a directory")
    run_json = out / _io.RUN_JSON
    if not run_json.exists():
        if any(out.iterdir()) and not _creation_leftovers(out):
            raise RunError(f"{out}: directory is not empty and holds no grokinterp run; choose another --out")
        return "new"
    if not _io.looks_like_run(out):  # never delete or reuse a directory we cannot recognise
        raise RunError(f"{out}: holds a {_io.RUN_JSON} that is not a readable grokinterp run's; refusing to "
                       f"touch it (choose another output directory)")
    info = _io.read_json(run_json, "run metadata")
    existing = info.get("config")
    if overwrite:
        shutil.rmtree(out)
        return "new"
    if existing == config.to_dict():
        return "same"
    raise RunError(f"{out}: already holds a different run; pass --overwrite (overwrite=True) to replace it, "
                   f"or choose another output directory")


def _creation_leftovers(out: Path) -> bool:
    """Whether ``out`` holds only what a ``train`` killed before writing ``run.json`` leaves behind."""
    for entry in out.iterdir():
        if entry.is_file() and (entry.name == _io.SPLIT_FILE or
                                (entry.name.startswith(".") and entry.name.endswith(".tmp"))):
            continue
        return False
    return True


def train(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    preset: str | None = None,
):
    """Train a model and write a run directory; returns the loaded :class:`~grokinterp.run.Run`.

    Args:
        config: the run's configuration (see :func:`grokinterp.make_config`).
        out: run directory to create. If it already holds a run with the same config, that run
            is resumed (or simply returned when finished); a different run is refused unless
            ``overwrite``.
        overwrite: replace a different run found in ``out``.
        progress: show a tqdm progress bar (epoch, train/test loss, test accuracy).
        preset: name of the preset the config came from, recorded in ``run.json``.

    Raises:
        ConfigError: invalid config or unavailable device (nothing is created).
        RunError: ``out`` is unusable, or a flush failed.
        TrainingInterrupted: SIGINT; everything up to the current epoch was flushed first.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"config: expected a RunConfig, got {type(config).__name__}")
    device = resolve_device(config.train.device)
    out = Path(out)
    if _check_out_dir(out, config, overwrite) == "same":
        return resume(out, progress=progress)
    train_pairs, test_pairs = split_pairs(config.task)
    from safetensors.torch import save as st_save

    try:  # run.json last: without it the directory is not a run, and `train` may start it again
        out.mkdir(parents=True, exist_ok=True)
        _io.write_atomic(out / _io.SPLIT_FILE, st_save(
            {"train_pairs": torch.from_numpy(train_pairs), "test_pairs": torch.from_numpy(test_pairs)},
            metadata={"pair_index": "a * p + b"},
        ))
        _io.write_json_atomic(out / _io.RUN_JSON, _run_metadata(config, device, preset, len(train_pairs), len(test_pairs)))
    except OSError as e:
        raise RunError(f"{out}: cannot create the run directory ({e.strerror or e})") from e
    trainer = _Trainer(config, out, device, train_pairs, test_pairs)
    with _sigint_flag() as stop:
        trainer.run(progress, stop)
    from .run import load_run

    return load_run(out)


def resume(run_dir: str | os.PathLike, *, progress: bool = True, device: str | None = None):
    """Continue an interrupted run from its last flush; returns the loaded run when done.

    The resumed run ends with checkpoints bit-identical (on CPU) to an uninterrupted one.
    A run killed before its first flush completed (no state, no progress file) starts again from
    its seeded initialisation; a run killed during its final flush gets that flush rewritten; a
    finished or imported run (:mod:`grokinterp.legacy`) is returned as it is.
    """
    from .run import load_run

    run = load_run(run_dir)
    config = run.config
    run_dir = run.path
    if "imported_from" in run.info:  # checkpoints of another codebase: nothing to continue
        return run
    state_path = run_dir / _io.STATE_FILE
    if state_path.exists():
        finished = _state_meta(state_path).get("finished") == "true"
    elif (run_dir / _io.PROGRESS_JSON).exists():
        raise RunError(f"{state_path}: the training state is missing although the run has flushed before; it "
                       f"cannot be resumed (its checkpoints stay readable)")
    else:  # killed before its first flush completed: start again from the (seeded) initialisation
        finished = False
    if finished:
        from .integrity import last_flush_complete

        if last_flush_complete(run_dir):
            return run
    dev = resolve_device(device or config.train.device)
    tp, sp = run.split_pairs()
    trainer = _Trainer(config, run_dir, dev, tp, sp)
    if state_path.exists():
        trainer.load_state(state_path)
    trainer.writer.drop_shards_after(trainer.flushed_upto)
    trainer.writer.n_written = int(np.sum(run.epochs <= trainer.flushed_upto))
    if finished:  # killed during the final flush, after the state: write progress and manifest again
        trainer.flush(config.train.epochs, finished=True)
    else:
        with _sigint_flag() as stop:
            trainer.run(progress, stop)
    return load_run(run_dir)


def _state_meta(path: Path) -> dict[str, str]:
    header, _ = _io.read_safetensors_header(path)
    meta = header.get("__metadata__", {})
    return meta if isinstance(meta, dict) else {}

