"""CONTRIBUTING.md's recipes, each added from inside this file alone and seen flowing end to end:
train → load_run → progress_measures / analyze_run / the HTML report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import grokinterp as g
from grokinterp import tasks
from grokinterp.analysis import summary
from grokinterp.analysis.measures import MEASURES, Measure, register_measure
from grokinterp.errors import AnalysisError, ConfigError
from grokinterp.tasks.base import Task
from grokinterp.training import transforms
from grokinterp.viz import report

SMALL = dict(d_model=32, n_heads=2, d_mlp=64, epochs=200, every=50, log_early=0, flush_every=4, eval_every=50)


# -- a task ------------------------------------------------------------------------------------------
class AffineTask(Task):
    """c = (a + 2b) mod n: a toy task kind that is not a registered operation."""

    def __init__(self, n: int):
        self.name, self.n = "toy_affine", n

    def labels_of(self, a, b):
        return (a + 2 * b) % self.n


def _affine_kind(name, p):
    return AffineTask(p) if name == "toy_affine" else None


@pytest.fixture
def affine_task():
    tasks.register_task_kind(_affine_kind)
    yield
    tasks._KINDS.remove(_affine_kind)  # noqa: SLF001 - test clean-up of the registry


def test_a_new_task_kind_trains_loads_and_is_measured(tmp_path, affine_task):
    cfg = g.make_config("tiny", operation="toy_affine", p=11, **SMALL)
    assert cfg.task.task().describe() == "toy_affine on 11 symbols"
    run = g.train(cfg, tmp_path / "affine", progress=False)
    loaded = g.load_run(run.path)
    x, y = loaded.train_data()
    assert torch.equal(y, (x[:, 0] + 2 * x[:, 1]) % 11)  # the labels are the task's
    assert len(loaded.train_data()[1]) + len(loaded.test_data()[1]) == 121
    df = g.progress_measures(loaded)
    assert len(df) == len(loaded.epochs) and np.isfinite(df["train_loss"]).all()
    with pytest.raises(ConfigError, match="task.operation"):
        g.make_config("tiny", operation="toy_affine_typo")


def test_a_new_operation_is_one_call(tmp_path):
    tasks.register_operation("toy_max", lambda a, b, p: np.maximum(a, b), formula="max(a, b)")
    try:
        run = g.train(g.make_config("tiny", operation="toy_max", p=7, **SMALL), tmp_path / "max", progress=False)
        x, y = run.train_data()
        assert torch.equal(y, torch.maximum(x[:, 0], x[:, 1]))
        assert run.task.describe() == "max(a, b) mod 7"
    finally:
        tasks.OPERATIONS.pop("toy_max", None)


# -- a measure ---------------------------------------------------------------------------------------
class LogitRMS(Measure):
    name, columns = "toy_logit_rms", ("toy_logit_rms",)
    definitions = {"toy_logit_rms": "root mean square of the logits over all p² inputs"}

    def compute(self, ctx):
        return {"toy_logit_rms": ctx.logits.double().pow(2).mean((1, 2, 3)).sqrt()}


@pytest.fixture
def logit_rms():
    register_measure(LogitRMS())
    yield
    MEASURES.pop("toy_logit_rms", None)


def test_a_new_measure_is_a_column_everywhere(tiny_run, logit_rms, tmp_path):
    eps = tiny_run.epochs[::10]
    df = g.progress_measures(tiny_run, epochs=eps, chunk=2)
    assert df.columns[-1] == "toy_logit_rms" and df.attrs["definitions"]["toy_logit_rms"].startswith("root")
    for i, e in enumerate(eps):  # a plain computation, one checkpoint at a time
        tokens = torch.cartesian_prod(torch.arange(31), torch.arange(31))
        tokens = torch.cat([tokens, torch.full((961, 1), 31)], dim=1)
        with torch.no_grad():
            L = tiny_run.model(int(e))(tokens)[:, -1].double()
        assert abs(df["toy_logit_rms"][i] - L.pow(2).mean().sqrt().item()) < 1e-5 * L.abs().max().item()
    only = g.progress_measures(tiny_run, epochs=eps[:2], measures=["toy_logit_rms", "losses"])
    assert list(only.columns) == ["epoch", "toy_logit_rms", "train_loss", "test_loss", "train_acc", "test_acc",
                                  "all_loss"]
    with pytest.raises(AnalysisError, match="already belong"):
        register_measure(type("Clash", (LogitRMS,), {"name": "toy_clash", "columns": ("train_loss",)})())
    with pytest.raises(AnalysisError, match="unknown measure"):
        g.progress_measures(tiny_run, measures=["nope"])


# -- a training intervention -------------------------------------------------------------------------
class SignSGDish:
    """Replaces each gradient by its sign times the mean |g| (state: number of calls)."""

    def __init__(self, params, tc):
        self.calls = torch.zeros((), dtype=torch.int64)

    def __call__(self, grads):
        for gr in grads.values():
            gr.copy_(gr.sign() * gr.abs().mean())
        self.calls += 1

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls.copy_(state["calls"])


def test_a_new_intervention_trains_resumes_and_reports(tmp_path):
    transforms.register_gradient_transform("toy_sign", SignSGDish)
    try:
        cfg = g.make_config("tiny", grad_transforms=("toy_sign",), p=11, **SMALL)
        run = g.train(cfg, tmp_path / "sign", progress=False)
        plain = g.train(cfg.replace(grad_transforms=()), tmp_path / "plain", progress=False)
        assert run.config.train.grad_transforms == ("toy_sign",)
        assert not torch.equal(run.stack("embed.W_E")[-1], plain.stack("embed.W_E")[-1])
        from safetensors.torch import load_file

        assert int(load_file(run.path / "state.safetensors")["transform/0.toy_sign/calls"]) == cfg.train.epochs
    finally:
        transforms.TRANSFORMS.pop("toy_sign", None)


# -- an analysis and a figure ------------------------------------------------------------------------
def test_a_new_analysis_and_figure_reach_the_report(tiny_run, tmp_path):
    import plotly.graph_objects as go

    summary.register_run_analysis("toy_we_rank", lambda a: int(torch.linalg.matrix_rank(a.run.params(-1)["embed.W_E"])))
    report.register_figure("Toy figure of the embedding norm", "Norm of W_E over the analysed checkpoints.",
                           lambda a: go.Figure(go.Scatter(x=a.epochs, y=a.embed_norms_over_time.norm(dim=-1).numpy())))
    try:
        out = tmp_path / "report.html"
        path, headline = g.write_report(tiny_run, out, max_checkpoints=12, return_headline=True)
        rank = int(torch.linalg.matrix_rank(tiny_run.params(-1)["embed.W_E"]))
        assert headline["extras"]["toy_we_rank"] == rank
        text = out.read_text()
        assert "Toy figure of the embedding norm" in text and "toy we rank" in text
    finally:
        summary.RUN_ANALYSES.pop("toy_we_rank", None)
        report.REPORT_FIGURES[:] = [f for f in report.REPORT_FIGURES if not f[0].startswith("Toy figure")]
