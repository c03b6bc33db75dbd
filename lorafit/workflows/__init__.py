"""Workflows: what one CLI command does, as a library call (commands -> workflows -> core)."""
