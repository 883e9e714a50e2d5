"""Everything the report and the studies say about one run, computed once.

:func:`analyze_run` runs the whole study of Nanda et al. on a run — progress measures over the
checkpoints, phases, when the circuit formed, the final model's key frequencies, neuron clusters,
logit fit and ablations — and returns a :class:`RunAnalysis` (tensors, DataFrames, dataclasses;
no figures). :meth:`RunAnalysis.headline` gives the numbers as a JSON-ready dict.

The study follows the task's structure: ``a + b`` mod p as in the paper; any other group structure
(``a − b``; ``a·b`` and ``a/b`` mod a prime in discrete-log coordinates, with the row and column of 0
reported apart; finite groups) with key irreps (frequencies of the group when it is cyclic), the
character fit ``χ_ρ(s(a,b)·t(c)⁻¹)`` and neuron clusters by irrep (Chughtai et al. 2023); a task
without a group structure with what stays well defined (Fourier spectra over the tokens, neuron and
head ablations) and the rest reported as undefined.

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
from ..model.denormals import with_flushed_denormals
from ..model.families import family_of
from ..model.grid import GRID_BUDGET, fold_unsupported, grid_outputs, grid_rows, neuron_logit_map
from ..tasks import CyclicSum, DiscreteLog
from .ablations import COLUMNS as ABLATION_COLUMNS
from .ablations import ablation_table, heads_undefined
from .fourier import embed_fourier_norms, fourier_basis, neuron_logit_fourier_norms
from .groups import (
    embed_irrep_norms,
    logit_character_fit,
    logit_irrep_norms_2d,
    model_character_fit,
    neuron_irrep_fve,
    neuron_logit_irrep_norms,
    task_structure,
)
from .inputs import residue_outputs
from .keyfreqs import key_checkpoint
from .logits import logit_cos_fit, logit_fourier_norms_2d
from .measures import get_measures, progress_measures
from .neurons import clusters_from_fve, neuron_fourier
from .phases import circuit_formation_epoch, detect_phases
from .probes.measures import CHEAP_PROBES
from .probes.vectors import VECTOR_UNDEFINED, vector_probes
from .vectors import (
    UNDEFINED,
    checkpoint_metrics,
    grokking_dates,
    hidden_activations,
    is_vector_run,
    neuron_statistics,
    run_loss,
)

__all__ = ["RunAnalysis", "analyze_run", "select_checkpoints", "RUN_ANALYSES", "register_run_analysis", "verdict"]

#: Extra analyses run by :func:`analyze_run` after the built-in ones: ``fn(analysis) -> result``.
#: Results land in ``RunAnalysis.extras[name]``; JSON-ready ones (numbers, strings, lists, dicts)
#: also appear in :meth:`RunAnalysis.headline` under ``"extras"``.
RUN_ANALYSES: dict[str, Callable[["RunAnalysis"], Any]] = {}


def register_run_analysis(name: str, fn: Callable[["RunAnalysis"], Any]) -> None:
    """Add an analysis to every :func:`analyze_run` (and so to the report and ``--summary-json``)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise AnalysisError(f"analysis name must be an identifier, got {name!r}")
    RUN_ANALYSES[name] = fn


#: Probe measures the report adds to the progress table (the NTK alignment is left out: a backward per class).
REPORT_PROBES = CHEAP_PROBES


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
    embed_norms_over_time: Tensor | None  # [ckpt, n_freq + 1] (None: the family has no embedding)
    embed_norms: Tensor | None  # [p] per component, final model (None: no embedding)
    W_L_norms: Tensor | None  # [p] per component, final model (None: no neuron-to-logit map)
    neurons: Any  # NeuronFourier
    acts: Tensor  # [a, b, d_mlp] final model
    pattern: Tensor | None  # [a, b, h, 3] (None: no attention, or a model the one-layer fold does not compute)
    logit_fit: Any  # LogitCosFit (a + b mod p), CharacterFit (other group structures) or None
    logit_norms_2d: Tensor  # [p, p] (group: [|G|, |G|] over the block in the group's coordinates)
    ablations: pd.DataFrame
    extras: dict[str, Any] = field(default_factory=dict)  # results of RUN_ANALYSES, by name
    structure: Any = None  # TaskStructure of the task (None: no group structure)
    key_names: tuple[str, ...] = ()  # names of the key irreps (empty for a + b mod p)
    component_labels: tuple[str, ...] = ()  # names of the components of embed_norms / W_L_norms
    component_keys: Tensor | None = None  # [components] the frequency / irrep of each component
    key_names_all: tuple[str, ...] = ()  # name of every frequency / irrep (index k)
    outside_block: dict[str, Any] | None = None  # mul / div mod p: the row and column of 0
    acts_neurons: tuple[int, ...] | None = None  # large grids: the neurons `acts` holds (else all of them)
    notes: list[str] = field(default_factory=list)  # what was left out, and why
    vector: dict[str, Any] | None = None  # a dataset task (vectors): grokking dates, neuron statistics, ...

    @property
    def noun(self) -> str:
        """``frequency`` (a cyclic structure or none: Fourier over the tokens) or ``irrep``."""
        return "irrep" if self.structure is not None and not self.structure.cyclic else "frequency"

    def headline(self) -> dict[str, Any]:
        """The headline numbers as plain Python values (JSON-ready)."""
        if self.vector is not None:
            return _vector_headline(self)
        s = self.run.summary()
        ph, cf = self.phases, self.circuit
        nf = self.neurons
        ts = self.structure

        def f(x):
            return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x

        abl = (self.ablations.pivot_table(index="ablation", columns="split", values="loss", sort=False)
               if len(self.ablations) else pd.DataFrame())
        fit = self.logit_fit
        last = self.measures.iloc[-1] if len(self.measures) else None

        def col(name):
            return f(float(last[name])) if last is not None and name in self.measures.columns else None

        out = {
            "run": str(self.run.path),
            "task": self.run.task.describe(),
            "structure": ts.describe() if ts is not None else None,
            "group": ts.group.name if ts is not None else None,
            "coordinates": ts.structure.coordinates if ts is not None else None,
            "generator": ts.structure.generator if ts is not None and isinstance(ts.structure, DiscreteLog) else None,
            "frac_train": self.run.config.task.frac_train,
            "epochs_trained": s.get("epoch_reached"),
            "n_checkpoints": int(len(self.run.epochs)),
            "n_checkpoints_analysed": int(len(self.epochs)),
            "key_frequencies": list(self.key_freqs),
            "key_irreps": list(self.key_names),
            "key_kind": self.noun,
            "n_key_frequencies": len(self.key_freqs),
            "key_frequency_rule": self.key_rule,
            # the checkpoint the key set was chosen at (None: given by the caller); every date below
            # that uses key terms (circuit formed, restricted / excluded loss) belongs to this key set
            "key_frequency_epoch": self.measures.attrs.get("key_freq_epoch"),
            # False: chosen at the last checkpoint before test accuracy reached 99 % (provisional: training
            # longer may change the set and the dates); None: given by the caller
            "key_set_final": _key_set_final(self.run, self.measures.attrs.get("key_freq_epoch")),
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
            "circuit_reason": cf.reason,
            "excluded_loss_rise_epoch": cf.excluded_loss_epoch,
            "excluded_loss_rule": cf.excluded_rule,
            "test_acc_99_epoch": cf.test_acc_99_epoch,
            "test_acc_99_upper_bound": bool(s.get("test_acc_99_upper_bound", False)),
            "lead_time_epochs": cf.lead_time,
            "last_checkpoint": {"epoch": int(last["epoch"]) if last is not None else None,
                                "restricted_acc": col("restricted_acc"), "train_acc": col("train_acc"),
                                "test_acc": col("test_acc")},
            "final_train_loss": f(s.get("final_train_loss")),
            "final_test_loss": f(s.get("final_test_loss")),
            "final_test_acc": f(s.get("final_test_acc")),
            "neurons_explained_by_one_freq": int(nf.explained.sum()),
            "neurons_total": nf.d_mlp,
            "neurons_explained_fraction": float(nf.explained_fraction),
            "logit_fve_key_freqs": f(float(fit.fve_key)) if fit is not None and fit.fve_key is not None else None,
            "logit_fit_terms": _fit_terms(ts),
            "logit_fve_label_coordinate": f(float(fit.fve_coordinate)) if getattr(fit, "fve_coordinate", None)
            is not None else None,
            "outside_block": self.outside_block,
            "neurons_fve_key": _fve_key(nf, self.key_freqs),
            "notes": list(self.notes),
            "ablation_loss": {k: {c: f(float(v)) for c, v in row.items()} for k, row in abl.iterrows()},
            "extras": {k: v for k, v in self.extras.items() if _json_ready(v)},
        }
        out["verdict"] = verdict(out)
        return out


def verdict(h: dict[str, Any], *, html: bool = False) -> str:
    """The headline's sentence: when the circuit formed and test accuracy passed 99 %, or why not.

    Never prints ``None``: a run whose circuit formed but whose test accuracy never reached 99 % stopped
    before cleanup, and the sentence gives the restricted accuracy (key terms alone, all pairs) against the
    full model's test accuracy at the last checkpoint; a 99 % epoch that is the first evaluation of test
    accuracy (an imported final model) is an upper bound and said so.

    Args:
        h: :meth:`RunAnalysis.headline` (without ``verdict``).
        html: numbers in bold, the text escaped.
    """
    import html as _html

    esc = _html.escape if html else (lambda x: x)

    def b(x):
        return f"<b>{esc(str(x))}</b>" if html else str(x)

    if h.get("structure") is None:
        return esc("This task declares no group structure: key frequencies, restricted / excluded loss and the "
                   "circuit-formation date are undefined for it (reported as such, never as a number); the report "
                   "shows the Fourier spectra over the tokens and the neuron and head ablations.")
    irrep = h.get("key_kind") == "irrep"
    kind = "key-irrep" if irrep else "key-frequency"
    keys = h.get("key_irreps") if irrep else h.get("key_frequencies")
    noun = "irreps" if irrep else "frequencies"
    ke = h.get("key_frequency_epoch")
    keyset = f"key {noun} {', '.join(map(str, keys or []))}" + (f", chosen at epoch {ke}" if ke is not None else "")
    if h.get("key_set_final") is False:
        keyset += (" — the last checkpoint, before test accuracy reached 99 %: provisional, training longer may "
                   "change the set and this date")
    formed, hit, lead = h.get("circuit_formed_epoch"), h.get("test_acc_99_epoch"), h.get("lead_time_epochs")
    bound = bool(h.get("test_acc_99_upper_bound"))
    pairs = "all pairs" if h.get("outside_block") is None else "the pairs of the block (a, b ≠ 0)"
    if hit is not None:
        passed = (esc("test accuracy was ≥ 99 % by epoch ") + b(hit) + esc(" (its first evaluation: an upper bound, "
                                                                         "not when it passed)")) if bound else \
            esc("test accuracy passed 99 % at epoch ") + b(hit)
    if formed is not None and hit is not None:
        return (esc("The generalizing circuit formed at epoch ") + b(formed)
                + esc(f" (the {kind} circuit alone classifies 99 % of {pairs}; {keyset}), ") + passed
                + esc(": a lead of " + ("at most " if bound else "")) + b(lead) + esc(" epochs."))
    if formed is not None:
        last = h.get("last_checkpoint") or {}

        def pct(x):
            return "—" if x is None else f"{x:.1%}"

        return (esc("The generalizing circuit formed at epoch ") + b(formed)
                + esc(f" (the {kind} circuit alone classifies 99 % of {pairs}; {keyset}), but test accuracy never "
                      f"reached 99 %: the run stopped before cleanup (memorization not yet removed). At the last "
                      f"checkpoint (epoch {last.get('epoch')}) the {kind} components alone classify ")
                + b(pct(last.get("restricted_acc"))) + esc(f" of {pairs}, the full model ")
                + b(pct(last.get("test_acc"))) + esc(" of the test pairs (train: " + pct(last.get("train_acc")) + ")."))
    if hit is None:
        return esc("Test accuracy never passed 99 %: this run has not grokked (yet).")
    why = h.get("circuit_reason")
    return (esc("The progress measures did not date the circuit's formation") + esc(f" ({why})" if why else "")
            + esc("; ") + passed + esc("."))


def _key_set_final(run, epoch) -> bool | None:
    if epoch is None:
        return None
    return key_checkpoint(run) == (int(epoch), True)


def _fve_key(nf, keys) -> float | None:
    """Mean over the neurons that vary of the fraction of their variance in the key terms (all key
    frequencies / irreps together: their single-frequency terms are orthogonal, so the FVEs add up)."""
    if not keys:
        return None
    fve = nf.fve[:, list(keys)].sum(-1)
    live = nf.fve[:, 1:].sum(-1) > 0
    return float(fve[live].mean()) if bool(live.any()) else None


def _fit_terms(ts) -> str | None:
    """The terms of the logit fit in words: cos(w(a+b−c)), cos(w(a−b−c)), cos(w(log a + log b − log c)), χ_ρ(...)."""
    if ts is None:
        return None
    st = ts.structure
    if isinstance(st, CyclicSum):
        return "cos(w(a+b−c))"
    if isinstance(st, DiscreteLog):
        return f"cos(w({st.word} − log c)) on Z_{ts.m}"
    if st.word == "a − b":
        return "cos(w(a − b − c))"
    return f"χ_ρ(s·c⁻¹), s = {st.word}"


def _outside_block(run, ts, logits: Tensor) -> dict[str, Any] | None:
    """Loss and accuracy of the final model on the valid pairs outside the block (``mul``: the 0 row and column)."""
    if ts is None or ts.full_block:
        return None
    labels = torch.from_numpy(run.task.label_grid().copy())
    trn, tst = (torch.from_numpy(np.asarray(x, dtype=np.int64)) for x in run.split_pairs())
    out = {"pairs": "valid pairs outside the group structure's block (for a·b, a/b mod p: a = 0 or b = 0)"}
    flat = logits.reshape(ts.n * ts.n, -1).double()
    for name, idx in (("train", trn), ("test", tst), ("all", torch.nonzero(labels >= 0)[:, 0])):
        idx = idx[ts.coords[idx] < 0]
        if len(idx) == 0:
            out[name] = {"n": 0, "loss": None, "acc": None}
            continue
        logp = torch.log_softmax(flat[idx], dim=-1)
        y = labels[idx]
        out[name] = {"n": int(len(idx)), "loss": float(-logp[torch.arange(len(idx)), y].mean()),
                     "acc": float((flat[idx].argmax(-1) == y).double().mean())}
    return out


@with_flushed_denormals
def analyze_run(run, *, key_freqs=None, max_checkpoints: int | None = 400,
                device: str = "cpu") -> RunAnalysis:
    """The full analysis of a run.

    Args:
        run: a :class:`~grokinterp.store.run.Run`.
        key_freqs: fix the key frequencies (default: ``W_L`` rule at the first checkpoint at or after test
            accuracy reached 99 %, else the last: :func:`~grokinterp.analysis.keyfreqs.key_checkpoint`).
        max_checkpoints: analyse at most this many checkpoints (evenly spread; ``None`` = all),
            which bounds the time on very dense runs.
        device: where the progress measures are computed.
    """
    if len(run.epochs) == 0:
        raise RunError(f"{run.path}: the run has no readable checkpoints to analyse")
    epochs = select_checkpoints(run.epochs, max_checkpoints)
    # the cheap probes (issue 20) ride along: they read the grid logits and weights the measures already hold
    if is_vector_run(run):
        if key_freqs is not None:
            raise AnalysisError(f"key_freqs: {UNDEFINED}")
        return _analyze_vector(run, epochs)
    measures = progress_measures(run, key_freqs, epochs=epochs, device=device,
                                 measures=[*get_measures(), *REPORT_PROBES])
    keys = tuple(measures.attrs["key_freqs"])
    rule = measures.attrs.get("key_freq_rule", "given")
    phases = detect_phases(measures)
    # The 99 % test-accuracy epoch from the training metrics (every eval_every epochs), the same
    # figure `grokinterp info` prints, rather than from the (possibly thinned) checkpoints.
    t99 = run.summary().get("test_acc_99_epoch")
    # measures are indexed by checkpoint label (optimizer steps in a minibatch run's step schedule)
    circuit = circuit_formation_epoch(measures, test_acc_99_epoch=None if t99 is None else run.checkpoint_label(t99))
    params, cfg = residue_outputs(run.params(-1), run.config.model)  # analyses see the residue logits
    ts = task_structure(run.task)
    grp = None if ts is None or isinstance(ts.structure, CyclicSum) else ts  # a + b: the paper's own analyses
    rows = grid_rows(cfg)
    fold = fold_unsupported(cfg) is None  # the one-layer transformer's table fold (attention patterns, heads)
    if grp is not None and rows is not None and fold:
        return _analyze_large(run, epochs, measures, phases, circuit, keys, rule, params, cfg, grp, rows)
    notes = []
    family = getattr(cfg, "family", "transformer")
    attention = family == "transformer"
    with torch.no_grad():
        out = grid_outputs(params, cfg, return_post=True, return_pattern=attention)
    if not fold:
        notes.append(f"{family} model ({family_of(cfg).describe(cfg)}): logits and neurons "
                     f"({family_of(cfg).hidden_hook(cfg)}) through the family's hooked module; " +
                     ("no attention pattern: the family has no attention" if not attention else
                      f"the attention pattern shown is the readout position's in the last block "
                      f"(blocks.{cfg.n_layers - 1})"))
    nf = neuron_fourier(out.post, structure=grp)
    W_L, W_L_what = neuron_logit_map(params, cfg)
    W_E = params.get("embed.W_E")
    if W_L is None:
        notes.append(f"{W_L_what}: the W_L spectrum is undefined")
    if W_E is None:
        notes.append("no embedding W_E (one-hot inputs): the embedding's spectra are undefined")
    if grp is None:
        if ts is None:
            fit = None  # no group structure: the cos(w(a+b−c)) fit would be a wrong number
        else:
            fit = logit_cos_fit(out.logits, keys) if keys else logit_cos_fit(out.logits)
        norms2d = logit_fourier_norms_2d(out.logits, per="component", center=True)
        over_time = None if W_E is None else embed_fourier_norms(run.stack("embed.W_E", epochs), run.p)
        embed_norms = None if W_E is None else embed_fourier_norms(W_E, run.p, per="component")
        W_L_norms = None if W_L is None else neuron_logit_fourier_norms(W_L, per="component")
        B = fourier_basis(run.p)
        labels, comp_keys, all_names = B.labels, B.freqs, B.freq_labels
    else:
        fit = logit_character_fit(out.logits, grp, keys if keys else None)
        norms2d = logit_irrep_norms_2d(out.logits, grp, per="component", center=True)
        over_time = None if W_E is None else embed_irrep_norms(run.stack("embed.W_E", epochs), grp)
        embed_norms = None if W_E is None else embed_irrep_norms(W_E, grp, per="component")
        W_L_norms = None if W_L is None else neuron_logit_irrep_norms(W_L, grp, per="component")
        B = grp.basis
        labels, comp_keys = B.labels, B.irrep_of_row
        all_names = tuple(n if not grp.cyclic else (str(i) if i else "const") for i, n in enumerate(B.names))
    # Ablations need key frequencies (or, without a group structure, only neurons and heads).
    heads_why = heads_undefined(cfg)
    if heads_why:
        notes.append(f"head ablations: {heads_why}")
    if W_E is None:
        notes.append("W_E ablations: undefined without an embedding")
    if ts is None or keys:
        abl = ablation_table(run, list(keys) if ts is not None else None)
    else:  # a run that never formed a circuit has no key terms to ablate
        abl = pd.DataFrame(columns=list(ABLATION_COLUMNS))
    analysis = RunAnalysis(
        run=run, epochs=epochs, measures=measures, phases=phases, circuit=circuit, key_freqs=keys, key_rule=rule,
        embed_norms_over_time=over_time, embed_norms=embed_norms, W_L_norms=W_L_norms,
        neurons=nf, acts=out.post, pattern=out.pattern, logit_fit=fit, logit_norms_2d=norms2d, ablations=abl,
        structure=ts, key_names=tuple(measures.attrs.get("key_irreps", ())), component_labels=tuple(labels),
        component_keys=comp_keys, key_names_all=tuple(all_names), outside_block=_outside_block(run, ts, out.logits),
    )
    analysis.notes.extend(notes)
    return _finish(analysis)


def _finish(analysis: RunAnalysis) -> RunAnalysis:
    for name, fn in RUN_ANALYSES.items():
        analysis.extras[name] = fn(analysis)
    return analysis


def _post_params(params: dict[str, Tensor], neurons) -> tuple[dict[str, Tensor], int]:
    """Parameters whose MLP keeps only ``neurons`` and whose unembedding one column: a forward of them gives
    those neurons' activations without the ``|G|³`` logits."""
    P = dict(params)
    P["blocks.0.mlp.W_in"] = params["blocks.0.mlp.W_in"][..., neurons]
    P["blocks.0.mlp.b_in"] = params["blocks.0.mlp.b_in"][..., neurons]
    P["blocks.0.mlp.W_out"] = params["blocks.0.mlp.W_out"][..., neurons, :]
    P["unembed.W_U"] = params["unembed.W_U"][..., :1]
    return P, len(neurons) if not isinstance(neurons, slice) else P["blocks.0.mlp.b_in"].shape[-1]


def _analyze_large(run, epochs, measures, phases, circuit, keys, rule, params, cfg, ts, rows) -> RunAnalysis:
    """:func:`analyze_run` for a grid too large to hold (a large group): the final model's pieces are streamed.

    The character fit streams blocks of rows; neurons are clustered a few at a time (a forward of the
    neurons alone); the attention pattern is gathered over blocks of rows; the 2-D logit spectrum and the
    ablations (each a forward of the whole grid) are left out and said so in ``extras["notes"]``."""
    import dataclasses

    n, dm = cfg.p, cfg.d_mlp
    per = int(max(1, min(dm, GRID_BUDGET // (40 * n * n))))  # neurons per forward: post + float64 transforms
    fves = []
    with torch.no_grad():
        for i in range(0, dm, per):
            P, k = _post_params(params, slice(i, min(i + per, dm)))
            post = grid_outputs(P, dataclasses.replace(cfg, d_mlp=k), return_post=True).post
            fves.append(neuron_irrep_fve(post, ts))
            del post
        nf = clusters_from_fve(torch.cat(fves, 0), n, names=ts.basis.names)
        sizes = nf.cluster_sizes.sort_values("n_neurons", ascending=False)
        chosen = [int(nf.clusters[int(f)][0]) for f in sizes["freq"][:4]] or list(range(min(4, dm)))
        P, k = _post_params(params, torch.tensor(chosen))
        acts = grid_outputs(P, dataclasses.replace(cfg, d_mlp=k), return_post=True).post
        pattern = torch.cat([grid_outputs(params, cfg, rows=(a0, min(a0 + rows, n)), return_pattern=True).pattern
                             for a0 in range(0, n, rows)], 0)
    fit = model_character_fit(params, cfg, ts, keys if keys else None, rows=rows)
    W_L = params["blocks.0.mlp.W_out"] @ params["unembed.W_U"]
    B = ts.basis
    names = tuple(nm if not ts.cyclic else (str(i) if i else "const") for i, nm in enumerate(B.names))
    analysis = RunAnalysis(
        run=run, epochs=epochs, measures=measures, phases=phases, circuit=circuit, key_freqs=keys, key_rule=rule,
        embed_norms_over_time=embed_irrep_norms(run.stack("embed.W_E", epochs), ts),
        embed_norms=embed_irrep_norms(params["embed.W_E"], ts, per="component"),
        W_L_norms=neuron_logit_irrep_norms(W_L, ts, per="component"),
        neurons=nf, acts=acts, pattern=pattern, logit_fit=fit, logit_norms_2d=None,
        ablations=pd.DataFrame(columns=list(ABLATION_COLUMNS)), structure=ts,
        key_names=tuple(measures.attrs.get("key_irreps", ())), component_labels=tuple(B.labels),
        component_keys=B.irrep_of_row, key_names_all=names, outside_block=None, acts_neurons=tuple(chosen),
    )
    analysis.notes.append(f"large grid ({n}² inputs, {n}³ logits per checkpoint): streamed in blocks of {rows} rows; "
                          f"the 2-D logit spectrum and the ablations (each a forward of the whole grid) are left out")
    return _finish(analysis)


def _json_ready(x: Any) -> bool:
    try:
        json.dumps(x, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


# -- dataset tasks (vectors) -------------------------------------------------------------------------------
def _analyze_vector(run, epochs: np.ndarray) -> RunAnalysis:
    """:func:`analyze_run` for a run on a dataset task: what is defined (losses and accuracies per checkpoint,
    the weight norm, grokking dates on test accuracy, neuron statistics per hidden layer) and a note on what is
    not (:data:`~grokinterp.analysis.vectors.UNDEFINED`)."""
    measures = checkpoint_metrics(run, epochs)
    # the report's probes that apply to a classifier of vectors, on the same checkpoints (issue 22): softmax
    # collapse, logit scale, update–weight cosine; the ones that need token pairs (RQI) are left out, not NaN-drawn
    probes = [p for p in REPORT_PROBES if p not in VECTOR_UNDEFINED]
    if probes:
        pr = vector_probes(run, probes, epochs)
        extra = [c for c in pr.columns if c not in measures.columns]
        measures = measures.merge(pr[["epoch", *extra]], on="epoch", how="left")
        measures.attrs["definitions"] = {c: pr.attrs["definitions"][c] for c in extra}
    measures.attrs["loss"] = run_loss(run)
    measures.attrs["p"] = run.p
    evals = run.evals
    try:
        phases = detect_phases(evals, p=run.p)
    except AnalysisError:
        phases = None
    k = run.config.steps_per_epoch()
    dates = grokking_dates(evals, k)
    cfg = run.config.model
    layers = []
    acts = None
    for layer in range(cfg.n_hidden_layers):
        a, y = hidden_activations(run, -1, layer, "all")
        st = neuron_statistics(a, y)
        layers.append({"layer": layer, "neurons": int(len(st)), "dead": int(st["dead"].sum()),
                       "mean_frac_active": float(st["frac_active"].mean()),
                       "median_class_fve": _finite(float(st["class_fve"].median())),
                       "neurons_class_fve_over_0.5": int((st["class_fve"] > 0.5).sum())})
        acts = a
    wn = measures["weight_norm"].to_numpy()
    vector = {"grokking": dates.as_dict(), "neuron_layers": layers,
              "weight_norm_first": float(wn[0]), "weight_norm_last": float(wn[-1]),
              "weight_norm_min": float(wn.min()), "steps_per_epoch": k,
              "checkpoint_unit": run.checkpoint_unit}
    empty = pd.DataFrame(columns=list(ABLATION_COLUMNS))
    analysis = RunAnalysis(
        run=run, epochs=epochs, measures=measures, phases=phases, circuit=None, key_freqs=(), key_rule="undefined",
        embed_norms_over_time=None, embed_norms=None, W_L_norms=None, neurons=None, acts=acts, pattern=None,
        logit_fit=None, logit_norms_2d=None, ablations=empty, structure=None, vector=vector)
    analysis.notes.append(f"{run.task.describe()}: {UNDEFINED}")
    return _finish(analysis)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _vector_headline(a: RunAnalysis) -> dict[str, Any]:
    run, v = a.run, a.vector
    s = run.summary()
    g = v["grokking"]
    last = a.measures.iloc[-1]
    out = {
        "run": str(run.path),
        "task": run.task.describe(),
        "structure": None,
        "train_size": int(s.get("n_train") or run.info.get("n_train") or 0) or None,
        "epochs_trained": s.get("epoch_reached"),
        "n_checkpoints": int(len(run.epochs)),
        "n_checkpoints_analysed": int(len(a.epochs)),
        "key_frequencies": None,
        "key_frequencies_note": UNDEFINED,
        "circuit_formed_epoch": None,
        "circuit_reason": UNDEFINED,
        "memorization_end": a.phases.memorization_end if a.phases is not None else None,
        "train_acc_100_epoch": g["train_100_epoch"], "train_acc_100_step": g["train_100_step"],
        "test_acc_at_train_100": g["test_at_train_100"], "test_acc_final": g["test_final"],
        "test_acc_rise": g["rise"], "grokked": g["grokked"], "generalized_epoch": g["generalized_epoch"],
        "generalized_step": g["generalized_step"], "grokking_reasons": g["reasons"],
        "weight_norm_first": v["weight_norm_first"], "weight_norm_last": v["weight_norm_last"],
        "weight_norm_min": v["weight_norm_min"],
        "last_checkpoint": {"label": int(last["epoch"]), "unit": v["checkpoint_unit"],
                            "train_acc": _finite(float(last["train_acc"])), "test_acc": _finite(float(last["test_acc"]))},
        "final_train_loss": _finite(float(s.get("final_train_loss") or math.nan)),
        "final_test_loss": _finite(float(s.get("final_test_loss") or math.nan)),
        "final_test_acc": _finite(float(s.get("final_test_acc") or math.nan)),
        "neuron_layers": v["neuron_layers"],
        "notes": list(a.notes),
        "extras": {k: x for k, x in a.extras.items() if _json_ready(x)},
    }
    out["verdict"] = vector_verdict(out)
    return out


def vector_verdict(h: dict[str, Any]) -> str:
    """The headline sentence of a run on a dataset task: did test accuracy rise (grok) after training accuracy
    reached 100 %?"""
    if h.get("train_acc_100_epoch") is None:
        return (f"Training accuracy never reached 100 % (final test accuracy {h.get('test_acc_final') or 0:.1%}); "
                f"grokking is not dated. Key frequencies and the other algebraic measures are undefined for this task.")
    e, t0, t1, r = (h["train_acc_100_epoch"], h["test_acc_at_train_100"], h["test_acc_final"], h["test_acc_rise"])
    step = h.get("train_acc_100_step")
    at = f"epoch {e}" + (f" (step {step})" if step is not None and step != e else "")
    if h.get("grokked"):
        g = h.get("generalized_epoch")
        return (f"Grokked: training accuracy reached 100 % at {at} with test accuracy {t0:.1%}; test accuracy then "
                f"rose by {r:.1%} to {t1:.1%}" + (f" (90 % of the rise by epoch {g})" if g is not None else "") + ".")
    return (f"No grokking by the rule (a rise ≥ 20 %): training accuracy reached 100 % at {at} with test accuracy "
            f"{t0:.1%}; at the end {t1:.1%} (a rise of {r:+.1%}).")
