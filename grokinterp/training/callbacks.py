"""Loop callbacks: how the progress bar, live measures and user code watch a training run.

A callback subclasses :class:`Callback` and overrides what it needs; every hook receives the
:class:`~grokinterp.training.loop.TrainLoop` (its ``config``, ``params``, ``metrics`` on the device,
``run_dir``: a single run's view of the one trainer; a stack's callbacks receive the
:class:`~grokinterp.training.stacked.StackedLoop`, whose ``metrics`` are ``[run, epochs + 1]``). Hooks run on the host between steps: anything that reads a device value
(``.item()``) synchronises with the device, so do that only every so often (``on_eval`` is the
natural place).

==================  ===============================================================================
hook                when
==================  ===============================================================================
``on_start``        before the first epoch (after a resume: at the resumed epoch)
``on_epoch``        the model at ``epoch``, evaluated (test metrics every ``eval_every`` epochs)
                    and snapshotted if due, before its step: the place to measure the model at
                    ``epoch`` (the final epoch included, where no step follows)
``on_step``         after the step from ``epoch`` (the metrics of ``epoch`` are recorded); in a
                    minibatch run after the last of the epoch's ``k`` steps
``on_eval``         after ``epoch``'s test metrics were recorded (every ``eval_every`` epochs)
``on_checkpoint``   after the parameters at ``epoch`` were snapshotted (its checkpoint label: an
                    optimizer step when the schedule counts steps, ``checkpoints.unit``)
``on_flush``        after a flush wrote everything up to ``epoch`` to disk
``on_end``          when the loop ends (finished, interrupted or failed)
==================  ===============================================================================

A callback that records numbers per epoch declares their columns in ``metric_columns`` (float64,
on the training device: write device scalars into ``loop.metrics[column][epoch]``, no host sync)
and ``text_columns`` (``loop.text_metrics[column][epoch] = "..."``); they are saved with the
state (so a resumed run continues them) and written to ``metrics.csv`` after the built-in columns.
Entries of ``loop.postfix`` (``{label: text}``) are shown in the progress bar.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Callback", "ProgressBar"]


class Callback:
    """Base class: every hook does nothing."""

    #: metric columns (float64 per epoch) this callback writes
    metric_columns: tuple[str, ...] = ()
    #: text metric columns this callback writes
    text_columns: tuple[str, ...] = ()

    def on_start(self, loop: Any, epoch: int) -> None: ...

    def on_epoch(self, loop: Any, epoch: int) -> None: ...

    def on_step(self, loop: Any, epoch: int) -> None: ...

    def on_eval(self, loop: Any, epoch: int) -> None: ...

    def on_checkpoint(self, loop: Any, epoch: int) -> None: ...

    def on_flush(self, loop: Any, epoch: int, finished: bool) -> None: ...

    def on_end(self, loop: Any) -> None: ...


class ProgressBar(Callback):
    """A tqdm bar over the epochs, showing train / test loss and test accuracy at each evaluation,
    and what other callbacks put in ``loop.postfix`` (the live measures)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_start(self, loop: Any, epoch: int) -> None:
        from tqdm.auto import tqdm

        total = loop.config.train.epochs + 1
        self.bar = tqdm(total=total, initial=epoch, desc="epoch", unit="ep", dynamic_ncols=True, mininterval=0.5)

    def on_step(self, loop: Any, epoch: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_eval(self, loop: Any, epoch: int) -> None:
        if self.bar is not None:  # the only host sync outside flushes
            m = loop.metrics
            self.bar.set_postfix(dict(train=f"{m['train_loss'][epoch].item():.2e}",
                                      test=f"{m['test_loss'][epoch].item():.2e}",
                                      acc=f"{m['test_acc'][epoch].item():.3f}", **getattr(loop, "postfix", {})),
                                 refresh=False)

    def on_end(self, loop: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
