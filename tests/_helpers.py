"""Helpers shared by several test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import subprocess
import sys

import torch

from grokinterp.config import ModelConfig
from grokinterp.model import HookedGrokTransformer
from grokinterp.training.callbacks import Callback

PY = sys.executable


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    """``python -m grokinterp ARGS`` in a subprocess, output captured as text."""
    return subprocess.run([PY, "-m", "grokinterp", *args], capture_output=True, text=True, **kw)


def cli_here(*args: str) -> tuple[int, str, str]:
    """``grokinterp ARGS`` in this process (no interpreter start-up): ``(exit status, stdout, stderr)``."""
    import io

    from grokinterp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse refusing a flag's value
            code = e.code
    return code, out.getvalue(), err.getvalue()


def close(x: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> bool:
    """Equal up to float32 rounding: max error ≤ rel × max(1, max |ref|) (either may be on a GPU)."""
    return (x.cpu() - ref.cpu()).abs().max().item() <= rel * max(1.0, ref.abs().max().item())


def perturbed(cfg: ModelConfig, scale: float = 3.0, seed: int = 0) -> HookedGrokTransformer:
    """A model with every parameter (biases too) moved by seeded noise of size ``scale / √d_model``."""
    model = HookedGrokTransformer(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # non-zero biases, larger weights: stress the identities
            p.add_(torch.randn(p.shape, generator=g) * scale / math.sqrt(cfg.d_model))
    return model


def paper_gen_train_test(frac_train: float, num: int, seed: int):
    """The paper code's ``gen_train_test``, transcribed: ``(train, test)`` lists of ``(a, b, =)`` triples."""
    pairs = [(i, j, num) for i in range(num) for j in range(num)]
    random.seed(seed)
    random.shuffle(pairs)
    div = int(frac_train * len(pairs))
    return pairs[:div], pairs[div:]


@contextlib.contextmanager
def deadline(seconds: float, error=lambda s: AssertionError(f"hung for {s} s")):
    """Raise ``error(seconds)`` in the main thread if the block runs longer (SIGALRM: a blocking
    system call, such as opening a FIFO, is interrupted too)."""
    def handler(signum, frame):
        raise error(seconds)

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def make_socket(path) -> None:
    """A Unix socket file at ``path`` (bound by its name from its directory: socket paths are short)."""
    import os
    import socket

    here = os.getcwd()
    os.chdir(os.path.dirname(os.fspath(path)) or ".")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(os.path.basename(os.fspath(path)))
    finally:
        sock.close()
        os.chdir(here)


class StopAt(Callback):
    """A training callback that asks the loop to stop (resumably) after the step from ``epoch``."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_step(self, loop, epoch: int) -> None:
        if epoch == self.epoch:
            loop.request_stop()
