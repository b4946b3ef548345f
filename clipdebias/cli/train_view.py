"""The training loop's progress events (:mod:`clipdebias.training.loop`) drawn as one rich progress bar,
for ``ssl`` and ``zeroshot``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgressView:
    """Renders the loop's progress events as one rich progress bar over all steps."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),  # the summary table gives the time taken; 80 columns fit the rest
            console=console,
            transient=False,
        )
        self.task: Any = None
        self.steps_per_epoch = 0
        self.epochs = 0
        self.top1 = ""
        self.step_stats = ""

    def __enter__(self) -> TrainProgressView:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.task is not None:  # the bar is only shown once training starts
            self.progress.__exit__(*exc)

    def __call__(self, event: Any) -> None:
        # the training loop loads torch, which the CLI imports only once a command runs
        from clipdebias.training.loop import EpochEnd, StepProgress, TrainStart

        if isinstance(event, TrainStart):
            self.progress.__enter__()
            self.steps_per_epoch, self.epochs = event.steps_per_epoch, event.epochs
            done = event.start_epoch * event.steps_per_epoch
            if event.start_epoch:
                self.progress.console.print(f"resuming after epoch {event.start_epoch} of {event.epochs}")
            self.task = self.progress.add_task(
                f"epoch {min(event.start_epoch + 1, event.epochs)}/{event.epochs}",
                total=event.epochs * event.steps_per_epoch,
                completed=done,
                stats="",
            )
        elif isinstance(event, StepProgress):
            accuracy = "" if event.pseudo_label_accuracy is None else f" pl-acc {event.pseudo_label_accuracy:.1f}%"
            self.step_stats = f"loss {event.loss:.3f} mask {event.mask_rate:.2f}{accuracy}"
            self.progress.update(
                self.task,
                description=f"epoch {event.epoch + 1}/{self.epochs}",
                completed=event.epoch * self.steps_per_epoch + event.step,
                stats=self.step_stats + self.top1,
            )
        elif isinstance(event, EpochEnd):
            self.top1 = f" top1 {event.record['top1']:.1f}%"
            if self.task is not None:  # shown at once: after the last epoch no step comes to show it
                self.progress.update(self.task, stats=self.step_stats + self.top1)
