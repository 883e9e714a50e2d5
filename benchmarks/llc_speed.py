"""LLC speed (issue 20, item 5): our stacked SGLD against devinterp's sampler, same model, draws and CPU.

(a) devinterp's grokking MLP (preset ``mlp-devinterp``; checkpoints of ``--run``, or a short run trained
    here): per checkpoint, ``devinterp.slt.sampler.estimate_learning_coeff_with_summary`` (devinterp 1.3.2, its
    ``SGLD``; the model a plain ``nn.Module`` as in their notebook, holding our weights) against
    :func:`grokinterp.analysis.llc.llc_over_checkpoints` with ``K`` checkpoints in one stack and with one
    checkpoint alone; the same ε, γ, nβ, chains, draws and batch size. Seconds per checkpoint, medians over
    ``--repeats`` interleaved repeats, the ratio, and the estimates of both (agreement).
(b) The paper's one-layer transformer (p = 113, d_model 128): seconds per SGLD step of ``K`` checkpoints ×
    4 chains in one stack, extrapolated to 100 checkpoints × 4 chains × 500 draws (the issue's target);
    ``--paper-full`` runs it whole instead.

devinterp is the optional ``[slt]`` extra: without it, (a) times ours only and says so.

    python benchmarks/llc_speed.py --run checkpoints/llc_study/mlp-devinterp-s4
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grokinterp as gi  # noqa: E402
from grokinterp.analysis.llc import SGLDConfig, llc_over_checkpoints, model_loss_fn, sample_llc  # noqa: E402
from grokinterp.model.families import family_of  # noqa: E402


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class PlainMLP(nn.Module):
    """devinterp's notebook MLP (embedding, two biased maps summed, GELU, unembedding without bias)."""

    def __init__(self, params):
        super().__init__()
        W_E, W_a, W_b = params["embed.W_E"], params["hidden.0.W_a"], params["hidden.0.W_b"]
        self.embedding = nn.Embedding(*W_E.shape)
        self.linear1l = nn.Linear(*W_a.shape)
        self.linear1r = nn.Linear(*W_b.shape)
        self.linear2 = nn.Linear(*params["unembed.W_U"].shape, bias=False)
        with torch.no_grad():
            self.embedding.weight.copy_(W_E)
            self.linear1l.weight.copy_(W_a.T)
            self.linear1l.bias.copy_(params["hidden.0.b_a"])
            self.linear1r.weight.copy_(W_b.T)
            self.linear1r.bias.copy_(params["hidden.0.b_b"])
            self.linear2.weight.copy_(params["unembed.W_U"].T)

    def forward(self, x):
        return self.linear2(F.gelu(self.linear1l(self.embedding(x[..., 0])) + self.linear1r(self.embedding(x[..., 1]))))


def devinterp_per_checkpoint(run, epochs, cfg: SGLDConfig):
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    x, y = run.train_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=cfg.batch_size, shuffle=True)

    def evaluate(m, data):
        xb, yb = data
        return F.cross_entropy(m(xb), yb), {}

    out, times = [], []
    for e in epochs:
        model = PlainMLP(run.params(int(e)))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = estimate_learning_coeff_with_summary(
                model, loader, evaluate=evaluate, sampling_method=SGLD,
                optimizer_kwargs=dict(lr=cfg.epsilon, localization=cfg.gamma, nbeta=cfg.nbeta),
                num_chains=cfg.chains, num_draws=cfg.draws, seed=cfg.seed, verbose=False)
        times.append(time.perf_counter() - t0)
        out.append(r["llc/mean"])
    return np.array(out), times


def check_plain_model(run):
    e = int(run.epochs[-1])
    x, _ = run.train_data()
    with torch.no_grad():
        ours = run.model(e)(x)[:, -1]
        plain = PlainMLP(run.params(e))(x)
    err = (ours - plain).abs().max().item()
    assert err < 1e-4, f"the plain MLP differs from ours by {err}"


def part_a(args, cfg):
    run = gi.load_run(args.run) if args.run else None
    tmp = None
    if run is None:
        tmp = tempfile.TemporaryDirectory(prefix="llc-speed-")
        c = gi.make_config("mlp-devinterp", epochs=60, every=50, log_early=0, device="cpu")
        run = gi.train(c, Path(tmp.name) / "run", progress=False)
    check_plain_model(run)
    eps = run.epochs[np.linspace(0, len(run.epochs) - 1, args.checkpoints).round().astype(int)]
    try:
        import devinterp  # noqa: F401

        have = True
    except ImportError:
        have = False
        print("devinterp is not installed (pip install 'grokinterp[slt]'): timing ours only")
    rows = {"devinterp": [], "ours_stacked": [], "ours_alone": []}
    est = {}
    for rep in range(args.repeats):
        if have:
            v, t = devinterp_per_checkpoint(run, eps, cfg)
            rows["devinterp"].append(statistics.median(t))
            est["devinterp"] = v
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            df = llc_over_checkpoints(run, cfg, epochs=eps)
            rows["ours_stacked"].append((time.perf_counter() - t0) / len(eps))
            est["ours"] = df["llc_mean"].to_numpy()
            t0 = time.perf_counter()
            llc_over_checkpoints(run, cfg, epochs=eps[-1:])
            rows["ours_alone"].append(time.perf_counter() - t0)
        print(f"repeat {rep}: " + ", ".join(f"{k} {v[-1]:.3f} s/ckpt" for k, v in rows.items() if v), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    print(f"\n(a) {run.config.model.family} p = {run.p}: {len(eps)} checkpoints, {cfg.chains} chain(s) × {cfg.draws} draws, "
          f"batch {cfg.batch_size}, ε {cfg.epsilon:g}, γ {cfg.gamma:g}, nβ {cfg.nbeta:g}")
    for k, v in med.items():
        print(f"  {k:13s} median {v:.3f} s per checkpoint")
    if "devinterp" in med:
        print(f"  ratio devinterp / ours (stacked): {med['devinterp'] / med['ours_stacked']:.1f}x; "
              f"devinterp / ours (one checkpoint alone): {med['devinterp'] / med['ours_alone']:.1f}x")
        d, o = est["devinterp"], est["ours"]
        print("  estimates (epoch: devinterp / ours): " + ", ".join(
            f"{int(e)}: {a:.1f} / {b:.1f}" for e, a, b in zip(eps, d, o)))
        rel = np.abs(o - d) / np.abs(d)
        print(f"  |ours − devinterp| / devinterp: median {np.median(rel):.1%}, max {rel.max():.1%} "
              f"(one chain each, different random streams)")
    if tmp is not None:
        tmp.cleanup()


def part_b(args):
    cfg0 = gi.make_config("paper", device="cpu").model
    fam = family_of(cfg0)
    K = args.paper_checkpoints
    params = [fam.init_params(dataclasses.replace(cfg0, init_seed=s)) for s in range(K)]
    P = {k: torch.stack([p[k] for p in params]) for k in params[0]}
    task = gi.make_config("paper").task
    from grokinterp.tasks import get_task

    t = get_task(task.operation, task.p)
    tokens, labels = t.dataset().select(np.sort(np.random.default_rng(0).permutation(len(t.valid_pairs()))[:3830]))
    tokens, labels = torch.from_numpy(tokens), torch.from_numpy(labels)
    loss = model_loss_fn(fam.forward, cfg0, tokens, labels)
    draws = 500 if args.paper_full else args.paper_draws
    cfg = SGLDConfig(epsilon=1e-4, gamma=100.0, nbeta=None, chains=4, draws=draws, batch_size=128)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sample_llc(P, loss, len(labels), cfg)
        times.append(time.perf_counter() - t0)
    per_step = statistics.median(times) / draws
    full = per_step * 500 * (100 / K)
    print(f"\n(b) paper model (p = 113, d_model 128, d_mlp 512): {K} checkpoints × 4 chains in one stack, batch 128: "
          f"median {per_step * 1e3:.0f} ms per SGLD step ({statistics.median(times):.1f} s for {draws} draws)")
    print(f"  100 checkpoints × 4 chains × 500 draws: {'measured' if args.paper_full and K == 100 else 'extrapolated'} "
          f"{full / 60:.1f} min on this CPU ({full / 100:.1f} s per checkpoint)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an mlp-devinterp run (default: train a short one here)")
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--chains", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paper-checkpoints", type=int, default=10)
    ap.add_argument("--paper-draws", type=int, default=20)
    ap.add_argument("--paper-full", action="store_true")
    ap.add_argument("--skip", choices=["a", "b"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, 1 thread")
    cfg = SGLDConfig(epsilon=3e-3, gamma=5.0, nbeta=2.0, chains=args.chains, draws=args.draws, batch_size=128, seed=0)
    if args.skip != "a":
        part_a(args, cfg)
    if args.skip != "b":
        part_b(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
