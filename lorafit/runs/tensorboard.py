"""Optional TensorBoard logging (`log.tensorboard: true`): the numbers of metrics.jsonl as scalars.

    <run>/tensorboard/events.out.tfevents.*     view with: tensorboard --logdir runs

Tags: train/loss, train/lr, train/grad_norm, train/tokens_per_s, valid/loss, valid/<metric> for task
metrics measured during training (eval.every), eval/<metric> for the end-of-run evaluation.
metrics.jsonl stays the record of truth; this is a view of it for people who live in TensorBoard.
tensorboard is an optional dependency (`pip install lorafit[tensorboard]`), imported only when asked.
"""

from __future__ import annotations

from pathlib import Path

from lorafit.errors import RecipeError

# metrics.jsonl key -> TensorBoard tag; task metrics logged during training arrive as eval_<name>.
TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "valid_loss": "valid/loss",
}


def summary_writer_class():
    """torch's SummaryWriter, or a one-line error saying how to install what it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RecipeError(
            "log.tensorboard: true needs the tensorboard package: pip install lorafit[tensorboard] "
            "(or set log.tensorboard: false)"
        ) from None
    return SummaryWriter


def scalars(record: dict) -> dict[str, float]:
    """The tags and values one metrics record contributes (non-numeric and None values are skipped)."""
    out = {}
    for key, value in record.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if key in TAGS:
            out[TAGS[key]] = float(value)
        elif key.startswith("eval_"):
            out[f"valid/{key.removeprefix('eval_')}"] = float(value)
    return out


class TensorBoardLog:
    """A SummaryWriter on <run>/tensorboard fed with metrics records. Only rank 0 should make one."""

    def __init__(self, directory: Path, resumed_at: int = 0) -> None:
        """`resumed_at`: the step of the checkpoint a resumed run starts from (0 for a new run)."""
        writer_class = summary_writer_class()
        # A run resumed from step T redoes steps T+1...; purge_step drops the events logged for them
        # before the interruption (step T's own records are kept, as in metrics.jsonl), so curves do
        # not double back.
        self.writer = writer_class(log_dir=str(directory), purge_step=resumed_at + 1 if resumed_at else None)

    def log(self, record: dict) -> None:
        """Write one metrics record's numbers as scalars at its step."""
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["step"])
        # Records come every log_every steps: flushing each costs little, and a crash or Ctrl-C then
        # loses nothing (the writer would otherwise hold them for up to two minutes).
        self.writer.flush()

    def log_eval(self, metrics: dict, step: int) -> None:
        """End-of-run task metrics as eval/<name> at the final step."""
        for name, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"eval/{name}", float(value), global_step=step)

    def close(self) -> None:
        self.writer.close()
