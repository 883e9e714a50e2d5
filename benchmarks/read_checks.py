"""Cost of the checks on read: load a 400-checkpoint p = 113 run and touch every checkpoint, checked or not.

The run is the synthetic paper-architecture run of ``analysis_speed.py`` (p = 113, d_model 128,
4 heads, d_mlp 512: 0.9 MB per checkpoint, 400 checkpoints in 8 shards, ~360 MB), written through
the package's public write API. Three ways of loading it, in one process, repeats interleaved (a
fresh :class:`~grokinterp.store.run.Run` each time, the files in the page cache for all):

* ``unchecked`` — ``load_run(path, check=False)``: structure only (what storage you trust gets);
* ``checked``   — ``load_run(path)``, the default: every file's xxh3-128 against the manifest;
* ``sha256``    — the same run with a manifest holding SHA-256 only (as runs written by release
  0.1.0 have): what the checks cost with that digest. (Its shards are hard links to the same files.)

and two ways of touching every checkpoint: ``params`` (``run.params(e)`` for every epoch: a copy
per checkpoint, how a loop over checkpoints reads them) and ``stacks`` (``run.stacks()`` and a sum
over each stack: memory-mapped, how the vectorised analyses read them). Prints the medians of the
wall-clock time and of the CPU time of the process (all its threads: the checks hash shards in
worker threads, so on a busy machine the wall-clock ratio also measures what other jobs left free;
the CPU ratio is the work the checks add), and the ratios checked / unchecked. Target: ≤ 1.5×.

    python benchmarks/read_checks.py                    # 400 checkpoints, 7 repeats
    python benchmarks/read_checks.py --checkpoints 100 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from analysis_speed import make_synthetic_run  # noqa: E402  (the one synthetic-run builder)


def _sha256_only_copy(src: Path, dst: Path) -> None:
    """``dst``: the run ``src`` with hard-linked files and a manifest without xxh3-128 entries."""
    for root, _, names in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in names:
            if name != "manifest.json":
                os.link(Path(root) / name, dst / rel / name)
    m = json.loads((src / "manifest.json").read_text())
    for entry in m["files"].values():
        entry.pop("xxh3_128", None)
    (dst / "manifest.json").write_text(json.dumps(m))


def _touch(run, how: str) -> float:
    total = 0.0
    if how == "params":
        for e in run.epochs:
            total += float(run.params(int(e))["embed.W_E"][0, 0])
    else:
        for stack in run.stacks().values():
            total += float(stack.sum())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dir", type=Path, help="where to build the run (default: a temporary directory)")
    args = ap.parse_args()

    import torch

    from grokinterp.store.run import load_run

    torch.set_num_threads(1)
    root = args.dir or Path(tempfile.mkdtemp(prefix="gi-read-checks-"))
    try:
        run_dir, old_dir = root / "run", root / "run-sha256"
        t0 = time.perf_counter()
        make_synthetic_run(run_dir, args.checkpoints)
        if old_dir.exists():
            shutil.rmtree(old_dir)
        _sha256_only_copy(run_dir, old_dir)
        size = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file())
        print(f"run: {args.checkpoints} checkpoints, p = 113, {size / 2 ** 20:.0f} MiB "
              f"(built in {time.perf_counter() - t0:.1f} s)")
        modes = {"unchecked": (run_dir, False), "checked": (run_dir, True), "sha256": (old_dir, True)}
        times: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for how in ("params", "stacks"):
            for path, check in modes.values():  # warm-up: page cache, imports
                _touch(load_run(path, check=check), how)
            for _ in range(args.repeats):
                for mode, (path, check) in modes.items():
                    t, c = time.perf_counter(), time.process_time()
                    run = load_run(path, check=check)
                    _touch(run, how)
                    times.setdefault((how, mode), []).append(time.perf_counter() - t)
                    cpu.setdefault((how, mode), []).append(time.process_time() - c)
                    del run
        print(f"medians over {args.repeats} repeats (load_run + touch every checkpoint):")
        for how in ("params", "stacks"):
            for label, table in (("wall", times), ("cpu ", cpu)):
                base = statistics.median(table[(how, "unchecked")])
                line = [f"  {how:7s} {label} unchecked {base:.3f} s"]
                for mode in ("checked", "sha256"):
                    m = statistics.median(table[(how, mode)])
                    line.append(f"{mode} {m:.3f} s ({m / base:.2f}x)")
                print(", ".join(line))
        print("target: checked / unchecked <= 1.5x (the default digest, xxh3-128)")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
