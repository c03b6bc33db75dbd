"""E2E NLG Challenge metrics with the official script's semantics (tuetschek/e2e-metrics).

    score_e2e(hypotheses, references) -> {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}

- BLEU: mteval-v13a BLEU, computed by sacrebleu (13a tokenisation, case-insensitive, exponential
  smoothing, closest reference length), with variable reference counts padded. 0-1 scale.
- NIST: our port of mteval-v13a's NIST (`mteval.py`), equal to the perl value the script reports.
- METEOR, ROUGE_L, CIDEr: pycocoevalcap 1.2 with its Java PTB tokenizer and METEOR jar
  (`coco_caption.py`). Without Java these are None, with a `<NAME>_unavailable` reason.

Values are unrounded; the official script prints them with 4 decimals.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lorafit.errors import DataError
from lorafit.eval.metrics import coco_caption, mteval

METRIC_NAMES = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")


def read_hypotheses(path: str | Path) -> list[str]:
    """System outputs, one per line (stripped; empty lines are empty outputs), as the script reads them."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig") as f:
            return [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read system outputs ({err})") from err


def read_references(path: str | Path) -> list[list[str]]:
    """References in the official plain-text format: one group per system line, groups separated by
    a blank line, one reference per line. A file without blank lines is single-reference (one
    reference per line), as in the official script.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read references ({err})") from err
    while lines and not lines[-1]:
        lines.pop()
    groups: list[list[str]] = [[]]
    for number, line in enumerate(lines, start=1):
        if line:
            groups[-1].append(line)
            continue
        if not groups[-1]:
            raise DataError(
                f"{path}:{number}: empty reference group (two blank lines in a row, or a leading blank line)"
            )
        groups.append([])
    if not groups[-1]:
        raise DataError(f"{path}: no references")
    if len(groups) == 1:
        return [[line] for line in groups[0]]
    return groups


def _check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if not hypotheses:
        raise DataError("no system outputs to score")
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} system outputs but {len(references)} reference groups")
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise DataError(f"references[{i}] is a string; expected a list of references")
        if not refs:
            raise DataError(f"references[{i}] is empty; every output needs at least one reference")


def _mteval_case(text: str) -> str:
    # mteval lowercases ASCII letters only (perl tr/[A-Z]/[a-z]/); sacrebleu's lowercase=True would
    # use str.lower() and also fold non-ASCII capitals such as "É". The official script also puts
    # each segment on one SGML line, so inner line breaks are plain spaces.
    return " ".join(mteval.lowercase_ascii(text).split())


def bleu_score(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0-1) as mteval-v13a computes it, via sacrebleu.

    Two degenerate corpora differ from mteval (sacrebleu's choices): if no output has any n-gram
    of some order n <= 4 (every output shorter than 4 tokens), sacrebleu scores 0 where mteval
    treats that order's precision as 1; with no matching unigram at all sacrebleu returns 0 where
    mteval's smoothing gives a tiny positive value.
    """
    import sacrebleu  # imported here: keeps `import lorafit.eval.metrics.e2e` cheap

    hyps = [_mteval_case(h) for h in hypotheses]
    # sacrebleu wants one stream per reference slot; None marks "this segment has fewer references".
    slots = max(len(refs) for refs in references)
    streams = [
        [_mteval_case(refs[k]) if k < len(refs) else None for refs in references] for k in range(slots)
    ]
    # force=True: E2E outputs often end in " ." and sacrebleu would warn that they look tokenised.
    result = sacrebleu.corpus_bleu(hyps, streams, lowercase=False, tokenize="13a", force=True)
    return result.score / 100.0


def score_e2e(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    java_timeout: float = coco_caption.DEFAULT_TIMEOUT_S,
) -> dict:
    """The five E2E metrics of `hypotheses[i]` against all of `references[i]`.

    Returns {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"} as floats; when Java (or a jar) is
    unavailable, METEOR/ROUGE_L/CIDEr are None and "<NAME>_unavailable" says why. `java_timeout`
    bounds each Java program in seconds. Raises DataError for mismatched or empty inputs.
    """
    _check_inputs(hypotheses, references)
    scores = {
        "BLEU": bleu_score(hypotheses, references),
        "NIST": mteval.nist_score(hypotheses, references),
    }
    scores.update(coco_caption.caption_scores(hypotheses, references, timeout=java_timeout))
    return scores
