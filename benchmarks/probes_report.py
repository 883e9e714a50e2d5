"""What the probes (issue 20, item 4) add to the report's progress table, measured in one process.

Times :func:`~grokinterp.analysis.measures.progress_measures` over a run's checkpoints with the default measures
(the plain report before the probes) and with the default measures plus the cheap probes the report now adds
(softmax collapse, update cosine, logit scale, RQI), interleaved, ``--repeats`` times each; prints the medians and
their ratio, then the NTK alignment's cost per checkpoint (opt-in, not in the report), then the whole
``write_report`` with and without the probes (``analysis.summary.REPORT_PROBES`` emptied), interleaved.

Example:
    OMP_NUM_THREADS=1 python benchmarks/probes_report.py checkpoints/study_probes/add-p59-adamw_wd-s0
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ntk-checkpoints", type=int, default=2)
    ap.add_argument("--report-repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import torch

    import grokinterp as gi
    from grokinterp.analysis.measures import get_measures, progress_measures
    from grokinterp.analysis.probes.measures import CHEAP_PROBES
    from grokinterp.viz.report import write_report

    run = gi.load_run(args.run)
    default = get_measures()
    print(f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}; run {run.path.name}: p = {run.p}, "
          f"{len(run.epochs)} checkpoints")
    progress_measures(run, epochs=run.epochs[:2], measures=[*default, *CHEAP_PROBES])  # warm-up
    plain, probes = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        progress_measures(run, measures=default)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        progress_measures(run, measures=[*default, *CHEAP_PROBES])
        probes.append(time.perf_counter() - t)
    mp, mq = statistics.median(plain), statistics.median(probes)
    print(f"progress table, default measures:            median {mp:.2f} s  ({', '.join(f'{x:.2f}' for x in plain)})")
    print(f"progress table, default + cheap probes:      median {mq:.2f} s  ({', '.join(f'{x:.2f}' for x in probes)})")
    print(f"ratio with / without probes: {mq / mp:.3f}")
    eps = run.epochs[-args.ntk_checkpoints:]
    t = time.perf_counter()
    progress_measures(run, epochs=eps, measures=["ntk_alignment"])
    print(f"NTK alignment (32 inputs, opt-in): {(time.perf_counter() - t) / len(eps):.2f} s per checkpoint")
    import grokinterp.analysis.summary as summary

    kept = summary.REPORT_PROBES
    with_p, without = [], []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(args.report_repeats):
            for probes_on, times in ((False, without), (True, with_p)):
                summary.REPORT_PROBES = kept if probes_on else ()
                t = time.perf_counter()
                write_report(run, Path(d) / "report.html")
                times.append(time.perf_counter() - t)
    summary.REPORT_PROBES = kept
    rw, rp = statistics.median(without), statistics.median(with_p)
    print(f"write_report without the probes: median {rw:.2f} s  ({', '.join(f'{x:.2f}' for x in without)})")
    print(f"write_report with the probes:    median {rp:.2f} s  ({', '.join(f'{x:.2f}' for x in with_p)})")
    print(f"report ratio with / without probes: {rp / rw:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
