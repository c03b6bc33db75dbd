"""Metrics of the generic `text` task (files or a `data.source`): exact match and BLEU for
generation, accuracy and macro F1 (or Pearson / Spearman / MSE for regression) for classification."""

from __future__ import annotations

from collections.abc import Sequence

from lorafit.tasks._io import check_lengths
from lorafit.tasks.types import ClassificationExample, EvalItem

NAME = "text"


def score_generation(predictions: Sequence[str], items: Sequence[EvalItem]) -> dict:
    """Exact match (any reference, outer whitespace stripped) and corpus BLEU on a 0-1 scale."""

    import sacrebleu

    check_lengths(NAME, predictions, items)
    hyps = [str(p).strip() for p in predictions]
    exact = [any(h == ref.strip() for ref in item.references) for h, item in zip(hyps, items, strict=True)]
    most = max((len(item.references) for item in items), default=0)
    streams = [[item.references[i] if i < len(item.references) else None for item in items] for i in range(most)]
    # 0-1, as E2E's BLEU; lowercased like mteval-v13a
    bleu = sacrebleu.corpus_bleu(hyps, streams, lowercase=True, tokenize="13a", force=True).score / 100 if items else None
    result = {"exact_match": sum(exact) / len(exact) if exact else None, "bleu": bleu}
    if not items:
        result |= {"exact_match_unavailable": "no eval items", "bleu_unavailable": "no eval items"}
    return result


def score_classification(num_labels: int, predictions: Sequence, items: Sequence[ClassificationExample]) -> dict:
    """Accuracy and macro F1, or for regression (num_labels 1) Pearson, Spearman and MSE."""
    check_lengths(NAME, predictions, items)
    if not items:
        return {"accuracy": None, "accuracy_unavailable": "no eval items"}
    gold = [item.label for item in items]
    if num_labels == 1:
        from scipy.stats import pearsonr, spearmanr

        pred = [float(p) for p in predictions]
        mse = sum((p - g) ** 2 for p, g in zip(pred, gold, strict=True)) / len(gold)
        if len(set(pred)) < 2 or len(set(gold)) < 2:
            reason = "constant predictions or labels"
            return {"pearson": None, "spearman": None, "mse": mse, "pearson_unavailable": reason,
                    "spearman_unavailable": reason}
        return {"pearson": float(pearsonr(pred, gold)[0]), "spearman": float(spearmanr(pred, gold)[0]), "mse": mse}
    from sklearn.metrics import f1_score

    pred = [int(p) for p in predictions]
    accuracy = sum(p == g for p, g in zip(pred, gold, strict=True)) / len(gold)
    return {"accuracy": accuracy, "macro_f1": float(f1_score(gold, pred, average="macro", zero_division=0))}
