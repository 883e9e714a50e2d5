"""Progress measures of a group task: S5 against today's p = 113 run, on the same machine.

The issue's target: progress measures for 400 checkpoints of an S5 run within 2× the cost of the
p = 113 run (``benchmarks/analysis_speed.py``). Both runs are synthetic (random weights, written
with the package's own writer; the cost does not depend on the weights) with the paper architecture
(d_model 128, 4 heads, d_mlp 512): ``add`` mod 113 with 30 % of the pairs and ``S5`` (120 symbols)
with 40 %. The S5 run goes through the group path: label sums over ``g·h``, the projector onto the
key irreps' matrix elements, per-irrep Gini in the group Fourier basis.

The two are timed alternately (so both see the same load on a shared machine) and medians are
quoted; it prints both medians, the ratio S5 / p113, and where the time goes for one S5 chunk.

    python benchmarks/group_analysis_speed.py                    # 400 checkpoints each
    python benchmarks/group_analysis_speed.py --checkpoints 100  # when the CPU is busy
    python benchmarks/group_analysis_speed.py --quick            # smoke run (16 checkpoints)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from analysis_speed import PAPER_KEY_FREQS, make_synthetic_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="16 checkpoints, 1 repeat")
    ap.add_argument("--keep", type=Path, help="build the runs here and keep them")
    args = ap.parse_args()
    n, repeats = (16, 1) if args.quick else (args.checkpoints, args.repeats)

    from grokinterp.analysis.measures import progress_measures

    root = args.keep or Path(tempfile.mkdtemp(prefix="grokinterp-bench-"))
    try:
        t0 = time.perf_counter()
        add = make_synthetic_run(root / "p113", n)
        s5 = make_synthetic_run(root / "S5", n, operation="S5", frac_train=0.4)
        print(f"built two synthetic runs of {n} checkpoints in {time.perf_counter() - t0:.0f} s "
              f"(torch threads: {torch.get_num_threads()})")
        keys = {"p113": list(PAPER_KEY_FREQS), "S5": [1, 3]}  # S5: [4,1] standard, [3,1,1]
        runs = {"p113": add, "S5": s5}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                t = time.perf_counter()
                df = progress_measures(run, keys[name])
                times[name].append(time.perf_counter() - t)
                assert len(df) == n and df["restricted_loss"].notna().all()
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"p = 113 (add, 30 %):  {med['p113']:.2f} s for {n} checkpoints (median of {repeats}; "
              f"{1000 * med['p113'] / n:.1f} ms per checkpoint)")
        print(f"S5 (120 symbols, 40 %): {med['S5']:.2f} s for {n} checkpoints (median of {repeats}; "
              f"{1000 * med['S5'] / n:.1f} ms per checkpoint)")
        ratio = med["S5"] / med["p113"]
        print(f"ratio S5 / p113 = {ratio:.2f} (target ≤ 2; the grid alone is (120/113)³ = {(120 / 113) ** 3:.2f}× "
              f"larger)")
        print(f"implementation: {df.attrs['implementation']}; S5 structure: {df.attrs['structure']}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
