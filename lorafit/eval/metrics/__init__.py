"""Evaluation metrics with the official scripts' semantics: E2E NLG (`e2e`), GLUE (`glue`), WikiSQL (`wikisql`).

Import the submodule you need; this package imports nothing itself, so `import lorafit.eval.metrics`
stays cheap (no torch, sacrebleu, scikit-learn or pycocoevalcap until a score is computed).
"""
