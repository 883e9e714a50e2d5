"""Everything the report and the studies say about one run, computed once.

:func:`analyze_run` runs the whole study of Nanda et al. on a run — progress measures over the
checkpoints, phases, when the circuit formed, the final model's key frequencies, neuron clusters,
logit fit and ablations — and returns a :class:`RunAnalysis` (tensors, DataFrames, dataclasses;
no figures). :meth:`RunAnalysis.headline` gives the numbers as a JSON-ready dict.

Example:
    >>> analysis = analyze_run(load_run("checkpoints/quick"))      # doctest: +SKIP
    >>> analysis.headline()["circuit_formed_epoch"]                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import AnalysisError, RunError
from ..model.grid import grid_forward
from .ablations import COLUMNS as ABLATION_COLUMNS
from .ablations import ablation_table
from .fourier import embed_fourier_norms, neuron_logit_fourier_norms
from .inputs import residue_outputs
from .logits import logit_cos_fit, logit_fourier_norms_2d
from .measures import progress_measures
from .neurons import neuron_fourier
from .phases import circuit_formation_epoch, detect_phases

__all__ = ["RunAnalysis", "analyze_run", "select_checkpoints", "RUN_ANALYSES", "register_run_analysis"]

#: Extra analyses run by :func:`analyze_run` after the built-in ones: ``fn(analysis) -> result``.
#: Results land in ``RunAnalysis.extras[name]``; JSON-ready ones (numbers, strings, lists, dicts)
#: also appear in :meth:`RunAnalysis.headline` under ``"extras"``.
RUN_ANALYSES: dict[str, Callable[["RunAnalysis"], Any]] = {}


def register_run_analysis(name: str, fn: Callable[["RunAnalysis"], Any]) -> None:
    """Add an analysis to every :func:`analyze_run` (and so to the report and ``--summary-json``)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise AnalysisError(f"analysis name must be an identifier, got {name!r}")
    RUN_ANALYSES[name] = fn


def select_checkpoints(epochs: np.ndarray, max_checkpoints: int | None) -> np.ndarray:
    """At most ``max_checkpoints`` epochs, evenly spread over the list, first and last kept."""
    if max_checkpoints is None or len(epochs) <= max_checkpoints:
        return np.asarray(epochs)
    if max_checkpoints < 2:
        raise RunError(f"max_checkpoints: must be at least 2, got {max_checkpoints}")
    idx = np.unique(np.round(np.linspace(0, len(epochs) - 1, max_checkpoints)).astype(int))
    return np.asarray(epochs)[idx]


@dataclass
class RunAnalysis:
    """The results of :func:`analyze_run` (see there)."""

    run: Any
    epochs: np.ndarray
    measures: pd.DataFrame
    phases: Any
    circuit: Any
    key_freqs: tuple[int, ...]
    key_rule: str
    embed_norms_over_time: Tensor  # [ckpt, n_freq + 1]
    embed_norms: Tensor  # [p] per component, final model
    W_L_norms: Tensor  # [p] per component, final model
    neurons: Any  # NeuronFourier
    acts: Tensor  # [a, b, d_mlp] final model
    pattern: Tensor  # [a, b, h, 3]
    logit_fit: Any  # LogitCosFit
    logit_norms_2d: Tensor  # [p, p]
    ablations: pd.DataFrame
    extras: dict[str, Any] = field(default_factory=dict)  # results of RUN_ANALYSES, by name

    def headline(self) -> dict[str, Any]:
        """The headline numbers as plain Python values (JSON-ready)."""
        s = self.run.summary()
        ph, cf = self.phases, self.circuit
        nf = self.neurons

        def f(x):
            return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x

        abl = (self.ablations.pivot_table(index="ablation", columns="split", values="loss", sort=False)
               if len(self.ablations) else pd.DataFrame())
        return {
            "run": str(self.run.path),
            "task": f"{self.run.config.task.operation} mod {self.run.p}",
            "frac_train": self.run.config.task.frac_train,
            "epochs_trained": s.get("epoch_reached"),
            "n_checkpoints": int(len(self.run.epochs)),
            "n_checkpoints_analysed": int(len(self.epochs)),
            "key_frequencies": list(self.key_freqs),
            "n_key_frequencies": len(self.key_freqs),
            "key_frequency_rule": self.key_rule,
            # our rules (the names say which rule; see "phases" for every boundary with its rule)
            "memorization_end": ph.memorization_end,
            "circuit_formation_end": ph.circuit_formation_end,
            "cleanup_end": ph.cleanup_end,
            # the paper's §5.2 descriptions, operationalised
            "memorization_end_paper": ph.memorization_end_paper,
            "circuit_formation_end_paper": ph.circuit_formation_end_paper,
            "cleanup_end_paper": ph.cleanup_end_paper,
            "phases": [{"name": b.name, "definition": b.definition, "phase": b.phase, "label": b.label,
                        "end": b.end, "rule": b.rule, "reason": b.reason} for b in ph.boundaries()],
            "phase_rules": {b.name: b.rule for b in ph.boundaries()},
            "phase_reasons": {b.name: b.reason for b in ph.boundaries() if b.reason},
            "circuit_formed_epoch": cf.epoch,
            "circuit_rule": cf.rule,
            "excluded_loss_rise_epoch": cf.excluded_loss_epoch,
            "excluded_loss_rule": cf.excluded_rule,
            "test_acc_99_epoch": cf.test_acc_99_epoch,
            "lead_time_epochs": cf.lead_time,
            "final_train_loss": f(s.get("final_train_loss")),
            "final_test_loss": f(s.get("final_test_loss")),
            "final_test_acc": f(s.get("final_test_acc")),
            "neurons_explained_by_one_freq": int(nf.explained.sum()),
            "neurons_total": nf.d_mlp,
            "neurons_explained_fraction": float(nf.explained_fraction),
            "logit_fve_key_freqs": f(float(self.logit_fit.fve_key)) if self.logit_fit.fve_key is not None else None,
            "ablation_loss": {k: {c: f(float(v)) for c, v in row.items()} for k, row in abl.iterrows()},
            "extras": {k: v for k, v in self.extras.items() if _json_ready(v)},
        }


def analyze_run(run, *, key_freqs=None, max_checkpoints: int | None = 400,
                device: str = "cpu") -> RunAnalysis:
    """The full analysis of a run.

    Args:
        run: a :class:`~grokinterp.run.Run`.
        key_freqs: fix the key frequencies (default: from the final checkpoint, ``W_L`` rule).
        max_checkpoints: analyse at most this many checkpoints (evenly spread; ``None`` = all),
            which bounds the time on very dense runs.
        device: where the progress measures are computed.
    """
    if len(run.epochs) == 0:
        raise RunError(f"{run.path}: the run has no readable checkpoints to analyse")
    epochs = select_checkpoints(run.epochs, max_checkpoints)
    measures = progress_measures(run, key_freqs, epochs=epochs, device=device)
    keys = tuple(measures.attrs["key_freqs"])
    rule = measures.attrs.get("key_freq_rule", "given")
    phases = detect_phases(measures)
    # The 99 % test-accuracy epoch from the training metrics (every eval_every epochs), the same
    # figure `grokinterp info` prints, rather than from the (possibly thinned) checkpoints.
    t99 = run.summary().get("test_acc_99_epoch")
    circuit = circuit_formation_epoch(measures, test_acc_99_epoch=t99)
    params, cfg = residue_outputs(run.params(-1), run.config.model)  # analyses see the residue logits
    with torch.no_grad():
        out = grid_forward(params, cfg, return_post=True, return_pattern=True)
    nf = neuron_fourier(out.post)
    fit = logit_cos_fit(out.logits, keys) if keys else logit_cos_fit(out.logits)
    norms2d = logit_fourier_norms_2d(out.logits, per="component", center=True)
    # Ablations need key frequencies; a run that never formed a circuit has none to ablate.
    abl = ablation_table(run, list(keys)) if keys else pd.DataFrame(columns=list(ABLATION_COLUMNS))
    W_L = params["blocks.0.mlp.W_out"] @ params["unembed.W_U"]
    analysis = RunAnalysis(
        run=run, epochs=epochs, measures=measures, phases=phases, circuit=circuit, key_freqs=keys, key_rule=rule,
        embed_norms_over_time=embed_fourier_norms(run.stack("embed.W_E", epochs)),
        embed_norms=embed_fourier_norms(params["embed.W_E"], per="component"),
        W_L_norms=neuron_logit_fourier_norms(W_L, per="component"),
        neurons=nf, acts=out.post, pattern=out.pattern, logit_fit=fit, logit_norms_2d=norms2d, ablations=abl,
    )
    for name, fn in RUN_ANALYSES.items():
        analysis.extras[name] = fn(analysis)
    return analysis


def _json_ready(x: Any) -> bool:
    try:
        json.dumps(x, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True
