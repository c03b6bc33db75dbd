"""NIST as mteval-v13a.pl computes it, the way the E2E NLG official script runs that perl script.

The E2E script (tuetschek/e2e-metrics `measure_scores.py`) writes the references into one SGML
"reference set" per reference slot. MRs have different numbers of references, so it pads the short
groups with empty segments: every MR ends up with `max_refs` references, most of them empty.
mteval then computes, over the whole corpus (system level, one document):

    info(w1..wn) = log2( count(w1..wn-1) / count(w1..wn) )     counts over every reference segment;
                                                                for n = 1 the numerator is the
                                                                total number of reference words
    NIST = sum_{n=1..5} [ sum_segments sum_{ngram in hyp} info(ngram) * min(hyp count, max ref count)
                          / (number of hypothesis n-grams) ]
           * BP(hyp words / (reference words / number of reference sets))
    BP(r) = exp(-beta * ln(r)^2) for 0 < r < 1, 1 for r >= 1, with beta chosen so BP(1.5^-1) = 0.5

The length term divides by the number of reference *sets* (the padded `max_refs`), not by each
MR's own reference count. With variable reference counts this makes the "average reference length"
much shorter than any real reference, so the penalty is almost never applied. That is how the
official perl numbers come out (E2E devel example: 7.8212); e2e-metrics' own Python port
(pymteval, `-p`) averages per segment instead and gets 7.7889. We reproduce the perl value.

Tokenisation is mteval's default (non-international) one: the "13a" rules, ASCII-only lowercasing
(perl `tr/[A-Z]/[a-z]/`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

# perl `tr/[A-Z]/[a-z]/` touches ASCII letters only; str.lower() would also fold "É" and friends.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# The four mteval-v13a punctuation rules, in order.
_PUNCTUATION = re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])")
_PERIOD_COMMA_AFTER_NON_DIGIT = re.compile(r"([^0-9])([\.,])")
_PERIOD_COMMA_BEFORE_NON_DIGIT = re.compile(r"([\.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")
_WHITESPACE = re.compile(r"\s+")

# mteval: beta = -ln(0.5) / ln(1.5)^2, so that a hypothesis 2/3 as long as the reference scores half.
_NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


def lowercase_ascii(text: str) -> str:
    """Lowercase as mteval does: ASCII letters only."""
    return text.translate(_ASCII_LOWER)


def normalize_13a(text: str, lowercase: bool = True) -> str:
    """Tokenise one segment as mteval-v13a does by default; returns space-separated tokens.

    The official script writes each segment on one SGML line and mteval collapses whitespace
    before tokenising, so line breaks inside a segment are just spaces here.
    """
    text = _WHITESPACE.sub(" ", text)
    text = text.replace("<skipped>", "")
    # SGML entities that mteval decodes (the E2E script does not escape its input, so a literal
    # "&amp;" in a sentence becomes "&" there too).
    text = text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = f" {text} "
    if lowercase:
        text = lowercase_ascii(text)
    text = _PUNCTUATION.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER_NON_DIGIT.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE_NON_DIGIT.sub(r" \1 \2", text)
    text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    return _WHITESPACE.sub(" ", text).strip()


def _tokens(text: str) -> list[str]:
    normalized = normalize_13a(text)
    return normalized.split(" ") if normalized else []


def _ngram_counts(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def nist_length_penalty(ratio: float) -> float:
    """mteval's NIST brevity factor for `ratio` = hypothesis length / average reference length."""
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-_NIST_BETA * math.log(ratio) ** 2)


def nist_score(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """Corpus NIST of `hypotheses` against per-segment reference lists, equal to the E2E perl value.

    `references[i]` holds every reference of segment i (any number, at least one).
    """
    hyp_tokens = [_tokens(h) for h in hypotheses]
    ref_tokens = [[_tokens(r) for r in refs] for refs in references]

    # Information weights come from n-gram counts over every reference of every segment.
    ref_counts: Counter = Counter()
    ref_words = 0
    for refs in ref_tokens:
        for ref in refs:
            ref_words += len(ref)
            for n in range(1, max_n + 1):
                ref_counts.update(_ngram_counts(ref, n))

    def info(ngram: tuple[str, ...]) -> float:
        context = ref_counts[ngram[:-1]] if len(ngram) > 1 else ref_words
        return math.log2(context / ref_counts[ngram])

    matched_info = [0.0] * (max_n + 1)
    hyp_ngrams = [0] * (max_n + 1)
    for hyp, refs in zip(hyp_tokens, ref_tokens, strict=True):
        for n in range(1, max_n + 1):
            hyp_ngrams[n] += max(len(hyp) - n + 1, 0)
            # A hypothesis n-gram is credited at most as often as it occurs in any single reference.
            max_ref = Counter()
            for ref in refs:
                for ngram, count in _ngram_counts(ref, n).items():
                    max_ref[ngram] = max(max_ref[ngram], count)
            for ngram, count in _ngram_counts(hyp, n).items():
                if ngram in max_ref:
                    matched_info[n] += info(ngram) * min(count, max_ref[ngram])

    score = sum(matched_info[n] / max(hyp_ngrams[n], 1) for n in range(1, max_n + 1))
    # The padded reference sets: see the module docstring for why this is max, not a mean.
    reference_sets = max(len(refs) for refs in references)
    average_ref_words = ref_words / reference_sets
    if average_ref_words == 0:
        return 0.0
    return score * nist_length_penalty(hyp_ngrams[1] / average_ref_words)
