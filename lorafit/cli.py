"""The `lorafit` command line: the entry point. The commands live in lorafit/commands/ (one module per
group, registered on one Typer app by importing them here, in the order `lorafit --help` lists them)."""

from __future__ import annotations

import importlib

from lorafit.commands.app import app, cli_command  # noqa: F401 - re-exported: tests and tools use lorafit.cli.app

# Importing a group registers its commands on `app`, in the order `lorafit --help` lists them.
for _group in ("training", "sweeping", "adapters", "serving", "listing"):
    importlib.import_module(f"lorafit.commands.{_group}")


def main() -> None:
    """Console-script entry point: where lorafit starts work, so process-wide settings go here, not
    in `import lorafit` (fast/memory.py: oneDNN reads its cache size once, before its first matmul)."""
    from lorafit.fast.memory import limit_onednn_primitive_cache

    limit_onednn_primitive_cache()
    app()

