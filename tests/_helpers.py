"""Helpers shared by several test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import math
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


class StopAt(Callback):
    """A training callback that asks the loop to stop (resumably) after the step from ``epoch``."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_step(self, loop, epoch: int) -> None:
        if epoch == self.epoch:
            loop.request_stop()


def chromium_dom(page) -> tuple[str | None, str]:
    """Render an HTML file in headless Chromium: ``(the DOM after scripts ran, stderr)``; ``(None, "")``
    when there is no Chromium on this machine."""
    import shutil
    import tempfile

    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                   None)
    if browser is None:
        return None, ""
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=180)
    return res.stdout, res.stderr
