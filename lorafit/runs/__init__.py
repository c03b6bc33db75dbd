"""Run directories and what keeps them trustworthy: atomic writes, checkpoints, interrupts, and what
reads them back (report, plots, TensorBoard)."""
