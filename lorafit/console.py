"""What the user sees: a rich progress bar on a terminal, plain log lines otherwise, nothing with --quiet.

--json keeps stdout for one JSON summary at the end (for scripts: `lorafit train r.yaml --json > s.json`);
the human output (log lines, tables, a bar when stderr is a terminal) goes to stderr instead.
Errors always go to stderr as one line.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def format_duration(seconds: float) -> str:
    """`1h02m03s`, or `2m03s` under an hour."""
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_train_status(record: dict) -> str:
    """The bar's status field for the latest training record: epoch, loss, lr, tokens/s."""
    if "loss" not in record:
        return ""
    return (f"epoch {record['epoch']:.2f}  loss {record['loss']:.4f}  lr {record['lr']:.1e}  "
            f"{record['tokens_per_s']:.0f} tok/s")


def format_train_record(record: dict, total: int) -> str:
    """One plain log line for a metrics record: a training step, a validation, or a task evaluation.

    `step 20/60  epoch 0.53  loss 1.2345  lr 1.80e-03  grad_norm 0.412  tok/s 1234  eta 2m10s`
    `step 20/60  valid_loss 1.1111`     `step 20/60  eval_bleu 0.4321  eval_exact_match 0.1000`
    """
    head = f"step {record['step']}/{total}"
    if "loss" not in record:  # a validation or task-evaluation record: show whatever numbers it holds
        parts = []
        for key, value in record.items():
            if key in ("step", "elapsed_s"):
                continue
            if value is None:
                parts.append(f"{key} n/a")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                parts.append(f"{key} {value:.4f}")
        return "  ".join([head, *parts])
    done = record["step"] / max(total, 1)
    eta = record["elapsed_s"] / done - record["elapsed_s"] if done > 0 else 0.0
    return (
        f"{head}  epoch {record['epoch']:.2f}  loss {record['loss']:.4f}  "
        f"lr {record['lr']:.2e}  grad_norm {record['grad_norm']:.3f}  tok/s {record['tokens_per_s']:.0f}  "
        f"eta {format_duration(eta)}"
    )


class Reporter:
    """Routes messages, progress and the final summary according to --quiet / --json and the TTY."""

    def __init__(self, quiet: bool = False, json_mode: bool = False, plain_every_s: float = 10.0) -> None:
        self.quiet = quiet
        self.json_mode = json_mode
        # Human output goes to stdout, except in --json mode where stdout carries only the summary.
        stream = sys.stderr if json_mode else sys.stdout
        self.console = Console(file=stream, highlight=False, soft_wrap=True)
        # isatty() on the stream itself, not rich's is_terminal: that one turns true with FORCE_COLOR,
        # which CI systems set, and a bar redrawn into a CI log is unreadable.
        self.interactive = not quiet and stream.isatty() and not self.console.is_dumb_terminal
        self.plain_every_s = plain_every_s

    def info(self, message: str) -> None:
        """One plain line, unless --quiet."""
        if not self.quiet:
            self.console.print(message, markup=False)

    def table(self, title: str, columns: list[str], rows: list[list]) -> None:
        """A table: drawn by rich on a terminal, aligned plain columns otherwise; nothing with --quiet."""
        if self.quiet:
            return
        if self.interactive:
            table = Table(title=title)
            for column in columns:
                table.add_column(column)
            for row in rows:
                table.add_row(*[str(v) for v in row])
            self.console.print(table)
        else:
            self.console.print(title, markup=False)
            widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(c) for i, c in enumerate(columns)]
            self.console.print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), markup=False)
            for row in rows:
                self.console.print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)), markup=False)

    def summary(self, data: dict) -> None:
        """The --json summary: exactly one JSON document on stdout."""
        if self.json_mode:
            sys.stdout.write(json.dumps(data, default=str) + "\n")
            sys.stdout.flush()

    @contextmanager
    def progress(self, description: str, total: int, plain_ticks: bool = True):
        """A progress handle with .advance(n, status=str) and .log(line); bar on a TTY, lines otherwise.

        Without a TTY, `plain_ticks` prints a "done/total eta" line every `plain_every_s` seconds
        (training turns it off: its log lines already say where it is).
        """
        handle = _Progress(self, description, total, plain_ticks)
        try:
            yield handle
        finally:
            handle.close()


class _Progress:
    def __init__(self, reporter: Reporter, description: str, total: int, plain_ticks: bool) -> None:
        self.reporter, self.description, self.total = reporter, description, total
        self.plain_ticks = plain_ticks
        self.done = 0
        self.started = self.last_plain = time.perf_counter()
        self.bar = None
        if reporter.interactive:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("eta"),  # no elapsed-time column: the line must fit 80 columns with the status
                TimeRemainingColumn(compact=True, elapsed_when_finished=True),
                TextColumn("{task.fields[status]}"),
                console=reporter.console,
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task(description, total=total, status="")

    def advance(self, n: int = 1, status: str | None = None) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n, **({"status": status} if status is not None else {}))
            return
        now = time.perf_counter()
        if self.plain_ticks and (
            now - self.last_plain >= self.reporter.plain_every_s or self.done >= self.total
        ):
            self.last_plain = now
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0
            self.reporter.info(f"{self.description}: {self.done}/{self.total}  eta {format_duration(eta)}")

    def log(self, line: str) -> None:
        """A line that stays in the scrollback above the bar (or a plain line)."""
        if self.bar is not None:
            self.bar.console.print(line, markup=False)
        else:
            self.reporter.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_metrics(reporter: Reporter, result: dict) -> None:
    """An evaluation result's metrics as a table titled by task, split and size, then why any is missing."""
    metrics = result["metrics"]
    rows = [[k, f"{v:.4f}" if isinstance(v, float) else ("n/a" if v is None else str(v))]
            for k, v in metrics.items() if not k.endswith("_unavailable")]
    reporter.table(f"{result['task']} {result['split']} ({result['num_examples']} inputs)", ["metric", "value"], rows)
    for key, reason in metrics.items():
        if key.endswith("_unavailable"):
            reporter.info(f"{key[: -len('_unavailable')]} unavailable: {reason}")
