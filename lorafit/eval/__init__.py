"""Evaluation: `predict` (classify / generate for a task's eval items, then score), `generate`
(batched decoding) and `metrics/` (official-parity E2E, GLUE, WikiSQL)."""
