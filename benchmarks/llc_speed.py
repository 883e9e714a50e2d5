"""LLC speed (issue 20, item 5): our stacked SGLD against devinterp's sampler, same model, draws and CPU.

(a) devinterp's grokking MLP (preset ``mlp-devinterp``; checkpoints of ``--run``, or a short run trained
    here): per checkpoint, ``devinterp.slt.sampler.estimate_learning_coeff_with_summary`` (devinterp 1.3.2, its
    ``SGLD``; the model a plain ``nn.Module`` as in their notebook, holding our weights) against
    :func:`grokinterp.analysis.llc.llc_over_checkpoints` with ``K`` checkpoints in one stack and with one
    checkpoint alone; the same ε, γ, nβ, chains, draws and batch size. Seconds per checkpoint, medians over
    ``--repeats`` interleaved repeats, the ratio, and the estimates of both (agreement).
(b) The paper's one-layer transformer (p = 113, d_model 128; ``--paper-run`` or fresh initialisations): seconds
    per SGLD step of ``K`` checkpoints × 4 chains in one stack, ours against the plain stacked loop (the family's
    forward, a flat gradient, w* copied per chain: this module's ``plain_sample``) in the same process, medians
    of interleaved repeats and their ratio, extrapolated to 100 checkpoints × 4 chains × 500 draws; and
    devinterp 1.3.2 per checkpoint on a plain ``nn.Module`` transformer (every position, as a user writes it)
    with the same sampler values, chains and draws. The measured 100 × 4 × 500 is ``analyses/llc_paper.py``'s
    ``llc`` stage (its ``summary.json["benchmark"]``).

devinterp is the optional ``[slt]`` extra: without it, (a) times ours only and says so.

    python benchmarks/llc_speed.py --run checkpoints/llc_study/mlp-devinterp-s4
    python benchmarks/llc_speed.py --skip a --paper-run checkpoints/llc_paper/paper-s0 --paper-draws 50
"""

from __future__ import annotations

import argparse
import dataclasses
import math
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


def plain_sample(P, loss_fn, n, cfg: SGLDConfig):
    """The textbook stacked SGLD loop (this module's previous sampler, kept as the plain implementation the
    benchmark compares against): flat parameters with views, one flat gradient (autograd concatenates the
    pieces), w* copied per chain, the update out of place; the acceptance every ``accept_every`` draws.
    Returns the loss trace ``[K, C, draws]``."""
    names = list(P)
    K, C = int(P[names[0]].shape[0]), cfg.chains
    R = K * C
    shapes = [tuple(P[k].shape[1:]) for k in names]
    sizes = [int(np.prod(s)) for s in shapes]
    w0 = torch.cat([P[k].reshape(K, -1).float() for k in names], 1)
    D = w0.shape[1]
    nbeta, eps, gamma = cfg.beta(n), cfg.epsilon, cfg.gamma
    g = torch.Generator().manual_seed(cfg.seed)
    gb = torch.Generator().manual_seed(cfg.seed + 1)
    m = cfg.batch(n)
    anchor = w0.repeat_interleave(C, 0)
    w = anchor.clone()
    trace = torch.empty(K, C, cfg.draws)

    def potential(wt, idx):
        wt = wt.detach().requires_grad_(True)
        views = {k: v.view(R, *s) for k, v, s in zip(names, wt.split(sizes, 1), shapes)}
        loss = loss_fn(views, idx)
        (grad,) = torch.autograd.grad(loss.sum(), wt)
        return loss.detach(), grad.mul_(nbeta).add_(wt.detach() - anchor, alpha=gamma)

    for t in range(cfg.draws):
        idx = torch.randint(0, n, (C, m), generator=gb).repeat(K, 1)
        loss, gU = potential(w, idx)
        trace[:, :, t] = loss.view(K, C)
        xi = torch.randn(C, D, generator=g)
        w_new = (w - (0.5 * eps) * gU).view(K, C, D).add_(xi, alpha=math.sqrt(eps)).view(R, D)
        if t % cfg.accept_every == 0:
            potential(w_new, idx)  # the acceptance's second forward and backward (its arithmetic is negligible)
        w = w_new
    return trace


class PlainTransformer(nn.Module):
    """The paper's one-layer transformer as a user writes it for devinterp: every position through attention and
    the MLP, logits of the last position (our weights; checked against our forward)."""

    def __init__(self, params, cfg):
        super().__init__()
        self.p = nn.ParameterDict({k.replace(".", "_"): nn.Parameter(v.clone()) for k, v in params.items()})
        self.cfg = cfg

    def forward(self, x):
        p, c = self.p, self.cfg
        h = p["embed_W_E"][x] + p["pos_embed_W_pos"][: x.shape[1]]  # [batch, pos, d_model]
        q, k, v = (torch.einsum("bpd,hde->bphe", h, p[f"blocks_0_attn_W_{n}"]) for n in "QKV")
        s = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(c.d_head)
        P_ = x.shape[1]
        s = s.masked_fill(torch.ones(P_, P_, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", s, v)
        h = h + torch.einsum("bqhe,hed->bqd", z, p["blocks_0_attn_W_O"])
        h = h + torch.relu(h @ p["blocks_0_mlp_W_in"] + p["blocks_0_mlp_b_in"]) @ p["blocks_0_mlp_W_out"] \
            + p["blocks_0_mlp_b_out"]
        return h[:, -1] @ p["unembed_W_U"]


def paper_models(args):
    """``K`` checkpoints of the paper model: of ``--paper-run`` (evenly spaced) or fresh initialisations, with
    the run's (or a seeded 30 %) training pairs."""
    if args.paper_run:
        run = gi.load_run(args.paper_run)
        eps = run.epochs[np.linspace(0, len(run.epochs) - 1, args.paper_checkpoints).round().astype(int)]
        P = {k: v.float() for k, v in run.stacks(epochs=eps).items()}
        tokens, labels = run.train_data()
        return run.config.model, P, tokens, labels, [int(e) for e in eps]
    cfg0 = gi.make_config("paper", device="cpu").model
    fam = family_of(cfg0)
    K = args.paper_checkpoints
    params = [fam.init_params(dataclasses.replace(cfg0, init_seed=s)) for s in range(K)]
    P = {k: torch.stack([p[k] for p in params]) for k in params[0]}
    task = gi.make_config("paper").task
    from grokinterp.tasks import get_task

    t = get_task(task.operation, task.p)
    tokens, labels = t.dataset().select(np.sort(np.random.default_rng(0).permutation(len(t.valid_pairs()))[:3830]))
    return cfg0, P, torch.from_numpy(tokens), torch.from_numpy(labels), list(range(K))


def devinterp_paper(cfg0, P, tokens, labels, cfg: SGLDConfig, k: int):
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    model = PlainTransformer({n: v[k] for n, v in P.items()}, cfg0)
    loader = DataLoader(TensorDataset(tokens, labels), batch_size=cfg.batch_size, shuffle=True)

    def evaluate(m, data):
        xb, yb = data
        return F.cross_entropy(m(xb), yb), {}

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = estimate_learning_coeff_with_summary(
            model, loader, evaluate=evaluate, sampling_method=SGLD,
            optimizer_kwargs=dict(lr=cfg.epsilon, localization=cfg.gamma, nbeta=cfg.nbeta),
            num_chains=cfg.chains, num_draws=cfg.draws, seed=cfg.seed, verbose=False)
    return r["llc/mean"], time.perf_counter() - t0


def part_b(args):
    cfg0, P, tokens, labels, eps = paper_models(args)
    fam = family_of(cfg0)
    K, n = len(eps), len(labels)
    x = tokens[:64]
    with torch.no_grad():
        ref = fam.forward({k: v[-1:] for k, v in P.items()}, x, cfg0)[0]
        err = (PlainTransformer({k: v[-1] for k, v in P.items()}, cfg0)(x) - ref).abs().max().item()
    assert err < 1e-4, f"the plain transformer differs from ours by {err}"
    draws = args.paper_draws
    # analyses/llc_paper.py's sampler: devinterp's ε 3e-3, γ 5, nβ 2 diverge on this model (NaN chains time differently)
    cfg = SGLDConfig(epsilon=1e-3, gamma=100.0, nbeta=10.0, chains=4, draws=draws, batch_size=128)
    plain_loss = model_loss_fn(fam.forward, cfg0, tokens, labels, fast=False)
    fast_loss = model_loss_fn(fam.forward, cfg0, tokens, labels)
    print(f"\n(b) paper model (p = 113, d_model 128, d_mlp 512), {'checkpoints ' + str(eps) if args.paper_run else 'fresh initialisations'}: "
          f"{K} checkpoints × 4 chains in one stack, batch 128, {draws} draws, fast forward applies: {fast_loss.fast}")
    rows = {"plain": [], "ours": []}
    try:
        import devinterp  # noqa: F401

        have = args.devinterp_checkpoints > 0
    except ImportError:
        have = False
        print("  devinterp is not installed (pip install 'grokinterp[slt]'): no devinterp column")
    rows_d, est_d = [], []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        plain_sample(P, plain_loss, n, cfg)
        rows["plain"].append((time.perf_counter() - t0) / draws)
        t0 = time.perf_counter()
        r = sample_llc(P, fast_loss, n, cfg)
        rows["ours"].append((time.perf_counter() - t0) / draws)
        if have and rep == 0:
            for k in range(min(K, args.devinterp_checkpoints)):
                v, sec = devinterp_paper(cfg0, P, tokens, labels, cfg, K - 1 - k)
                rows_d.append(sec)
                est_d.append((eps[K - 1 - k], v, float(r.mean[K - 1 - k])))
        print(f"  repeat {rep}: plain {rows['plain'][-1]:.3f} s, ours {rows['ours'][-1]:.3f} s per stacked step", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"  median per SGLD step of the {K} × 4 stack: plain {med['plain']:.3f} s, ours {med['ours']:.3f} s: "
          f"ratio plain / ours {med['plain'] / med['ours']:.2f}x")
    per_ckpt = med["ours"] * draws / K
    print(f"  ours per checkpoint (4 chains × {draws} draws, in the stack): {per_ckpt:.2f} s; "
          f"100 checkpoints × 4 chains × 500 draws extrapolated: {med['ours'] * 500 * 100 / K / 60:.1f} min "
          f"(plain: {med['plain'] * 500 * 100 / K / 60:.1f} min)")
    if rows_d:
        md = statistics.median(rows_d)
        print(f"  devinterp 1.3.2 per checkpoint (4 chains × {draws} draws, one checkpoint per call), median of "
              f"{len(rows_d)}: {md:.2f} s: ratio devinterp / ours (stacked) {md / per_ckpt:.1f}x")
        print("  estimates (epoch: devinterp / ours): " + ", ".join(f"{e}: {a:.1f} / {b:.1f}" for e, a, b in est_d))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an mlp-devinterp run (default: train a short one here)")
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--chains", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paper-run", help="a paper-preset run whose checkpoints (b) samples (default: fresh inits)")
    ap.add_argument("--paper-checkpoints", type=int, default=10)
    ap.add_argument("--paper-draws", type=int, default=20)
    ap.add_argument("--devinterp-checkpoints", type=int, default=2,
                    help="(b): checkpoints devinterp samples alone, same chains and draws (0: none)")
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
