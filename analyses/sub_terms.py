"""Where the logits of grokked ``a − b mod p`` models live: cos/sin(w(a−b−c)) vs cos/sin(w(a−b+c)).

For each seed this trains (or reuses) a ``tiny`` run of ``sub`` (p = 31, 70 % of the pairs, 1,000 epochs),
keeps the runs whose test accuracy reached 99 %, and splits the centred logits of the final model
(``L[a, b, c] − mean_c``, over every pair) into, per key frequency ``w`` (and over all frequencies):

* ``minus``: cos/sin(w(a − b − c)) — the characters (and their sine partners): what a rotation in
  ``s = a − b`` computes;
* ``plus``: cos/sin(w(a − b + c)) — the reflected terms NOTES.md discusses;
* ``coordinate``: everything that depends on ``(a, b)`` only through ``s = a − b`` (the ceiling of both).

Each share is ``⟨L, X⟩² / (‖X‖² ‖L‖²)`` for the term ``X(a, b, c) = f(a − b, c)`` (the terms are
orthogonal); the cos(w(a−b−c)) share equals ``analyze_run``'s ``logit_fve_key_freqs`` (checked).
Writes ``runs.csv`` and ``summary.json`` (medians and ranges over the grokked seeds) into ``--out``.

Example:
    python analyses/sub_terms.py --seeds 0,1,2,3,4,5,6,7,8,9
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import _study as S


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=S.ints, default=list(range(20)))
    ap.add_argument("--runs-dir", type=Path, default=Path("checkpoints/study_sub_terms"))
    ap.add_argument("--out", type=Path, default=Path("analyses/results/sub_terms"))
    return ap.parse_args(argv)


def shares(run) -> dict:
    import torch

    from grokinterp.analysis.groups import task_structure
    from grokinterp.analysis.inputs import residue_outputs
    from grokinterp.analysis.keyfreqs import resolve_key_frequencies
    from grokinterp.model.grid import grid_forward

    ts = task_structure(run.task)
    params, cfg = residue_outputs(run.params(-1), run.config.model)
    with torch.no_grad():
        L = grid_forward(params, cfg).logits.double()[..., ts.element_token]
    Lc = L - L.mean(-1, keepdim=True)
    m = ts.m
    total = float(Lc.reshape(ts.n * ts.n, m)[ts.coords >= 0].pow(2).sum())
    Ssum = ts.label_sums(Lc[None])[0]  # [s, c]: sums over the m pairs with a − b = s
    s = torch.arange(m, dtype=torch.float64)[:, None]
    c = torch.arange(m, dtype=torch.float64)[None, :]

    def fve(f):
        return float((Ssum * f).sum() ** 2 / (m * f.pow(2).sum()) / total)

    keys = list(resolve_key_frequencies(run).freqs)
    out = {"key_freqs": keys, "coordinate": float(Ssum.pow(2).sum() / m / total)}
    for name, sel in (("key", keys), ("all", range(1, (m - 1) // 2 + 1))):
        ws = [2 * math.pi * k / m for k in sel]
        out[f"{name}_cos_minus"] = sum(fve(torch.cos(w * (s - c))) for w in ws)
        out[f"{name}_minus"] = sum(fve(torch.cos(w * (s - c))) + fve(torch.sin(w * (s - c))) for w in ws)
        out[f"{name}_plus"] = sum(fve(torch.cos(w * (s + c))) + fve(torch.sin(w * (s + c))) for w in ws)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd

    import grokinterp as gi

    rows = []
    for seed in args.seeds:
        cfg = gi.make_config("tiny", operation="sub", split_seed=seed, init_seed=seed, live_every=0)
        run = S.train_until(cfg, args.runs_dir / f"sub_tiny_{seed}")
        summ = run.summary()
        row = {"seed": seed, "test_acc_99_epoch": summ.get("test_acc_99_epoch"), "final_test_acc": summ.get("final_test_acc")}
        if row["test_acc_99_epoch"] is not None:
            row |= shares(run)
            row["logit_fve_key_freqs"] = gi.analyze_run(run, max_checkpoints=60).headline()["logit_fve_key_freqs"]
        rows.append(row)
        print(row, flush=True)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "runs.csv", index=False)
    ok = df[df["test_acc_99_epoch"].notna()]
    cols = ("key_plus", "all_plus", "key_cos_minus", "key_minus", "coordinate")
    S.write_json(args.out / "summary.json", {
        "settings": S.settings(args),
        "grokked_seeds": ok["seed"].tolist(), "n_seeds": len(df),
        "spreads": {c: S.seed_spread(ok[c].tolist()) for c in cols},
        "runs": ok.to_dict(orient="records")})
    print(ok.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
