"""E2E metrics: parity with the official e2e-metrics script, mteval NIST details, and life without Java.

The reference values are the official script's output (METRICS.md), perl mteval for BLEU/NIST.
Each parity fixture is scored once per module: METEOR's JVM loads a paraphrase table for ~6 s.
"""

import math
import subprocess
import sys
import tempfile

import pytest

from lorafit.errors import DataError
from lorafit.eval.metrics import coco_caption, e2e, mteval

needs_java = pytest.mark.skipif(
    coco_caption.find_java() is None or coco_caption.find_pycocoevalcap() is None,
    reason="java or pycocoevalcap not available",
)

OFFICIAL = {
    # (references, system outputs): official BLEU, NIST, METEOR, ROUGE_L, CIDEr
    ("refs.txt", "sys.txt"): (0.5995, 8.5789, 0.4498, 0.6528, 1.8543),
    ("devel-conc.txt", "baseline-output.txt"): (0.7203, 7.8212, 0.4801, 0.7910, 2.3039),
}
TOLERANCE = {"BLEU": 0.001, "NIST": 0.01, "METEOR": 0.001, "ROUGE_L": 0.001, "CIDEr": 0.001}


def load_fixture(data_dir, refs_name, sys_name):
    folder = data_dir / "e2e" / "metric_parity"
    return e2e.read_hypotheses(folder / sys_name), e2e.read_references(folder / refs_name)


@pytest.fixture(scope="module", params=list(OFFICIAL), ids=["refs-547", "devel-conc-10"])
def parity(request, data_dir):
    hyps, refs = load_fixture(data_dir, *request.param)
    return e2e.score_e2e(hyps, refs), dict(zip(e2e.METRIC_NAMES, OFFICIAL[request.param], strict=True))


@needs_java
@pytest.mark.parametrize("name", e2e.METRIC_NAMES)
def test_parity_with_official_script(parity, name):
    scores, official = parity
    assert set(scores) == set(e2e.METRIC_NAMES)  # no "_unavailable" keys
    assert scores[name] == pytest.approx(official[name], abs=TOLERANCE[name])


def test_bleu_and_nist_without_java(data_dir, monkeypatch, tmp_path):
    """Java hidden: METEOR/ROUGE_L/CIDEr are None with a reason; BLEU and NIST are still exact."""
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java
    assert coco_caption.find_java() is None
    hyps, refs = load_fixture(data_dir, "devel-conc.txt", "baseline-output.txt")
    scores = e2e.score_e2e(hyps, refs)
    assert scores["BLEU"] == pytest.approx(0.7203, abs=0.0001)
    assert scores["NIST"] == pytest.approx(7.8212, abs=0.0001)
    for name in coco_caption.JAVA_METRICS:
        assert scores[name] is None
        reason = scores[f"{name}_unavailable"]
        assert "java" in reason and "\n" not in reason


def test_nist_matches_perl_not_pymteval_on_the_devel_example(data_dir):
    # 7.8212 is perl mteval; e2e-metrics' pymteval (-p) reports 7.7889 because it averages the
    # reference length per segment. Both share the information-weighted n-gram sum.
    hyps, refs = load_fixture(data_dir, "devel-conc.txt", "baseline-output.txt")
    assert mteval.nist_score(hyps, refs) == pytest.approx(7.8212, abs=0.0001)


def test_nist_by_hand_with_variable_reference_counts():
    hyps = ["a", "x y"]
    refs = [["a b"], ["x y", "x y z w", "x"]]
    # Reference counts over all 4 references (9 words): a 1, b 1, x 3, y 2, z 1, w 1; "x y" 2.
    # info(a) = log2(9/1), info(x) = log2(9/3), info(y) = log2(9/2), info(x y) = log2(3/2).
    unigrams = (math.log2(9) + math.log2(3) + math.log2(9 / 2)) / 3  # 3 hypothesis words
    bigrams = math.log2(3 / 2) / 1  # 1 hypothesis bigram
    # mteval's average reference length is 9 words / 3 reference sets (the padded maximum) = 3,
    # which equals the 3 hypothesis words: no brevity penalty. (Per-segment averaging would give
    # 2 + 7/3 words and a penalty.)
    assert mteval.nist_score(hyps, refs) == pytest.approx(unigrams + bigrams)


def test_nist_brevity_penalty():
    # beta makes a hypothesis 2/3 the reference length score half.
    assert mteval.nist_length_penalty(2 / 3) == pytest.approx(0.5)
    assert mteval.nist_length_penalty(1.2) == 1.0
    assert mteval.nist_length_penalty(0.0) == 0.0
    # "a" against "a b c d": info(a) = log2(4), times BP(1/4).
    assert mteval.nist_score(["a"], [["a b c d"]]) == pytest.approx(2 * mteval.nist_length_penalty(0.25))


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("The Vaults costs £20-25, it's 5.5 stars.", "the vaults costs £20 - 25 , it's 5.5 stars ."),
        ('Café ÉLAN is near 1,000 &amp; "x"', 'café Élan is near 1,000 & " x "'),  # ASCII-only lowercasing
        ("  line\nbreak  ", "line break"),
    ],
)
def test_mteval_tokenization(text, tokens):
    assert mteval.normalize_13a(text) == tokens


def test_read_references_formats(data_dir, tmp_path):
    hyps, refs = load_fixture(data_dir, "refs.txt", "sys.txt")
    assert len(hyps) == len(refs) == 547
    assert sum(map(len, refs)) == 4125
    assert min(map(len, refs)) == 1 and max(map(len, refs)) == 42
    _, devel = load_fixture(data_dir, "devel-conc.txt", "baseline-output.txt")
    assert len(devel) == 10
    single = tmp_path / "single.txt"
    single.write_text("one\ntwo\n")
    assert e2e.read_references(single) == [["one"], ["two"]]  # no blank line: one reference each
    broken = tmp_path / "broken.txt"
    broken.write_text("a\n\n\nb\n")
    with pytest.raises(DataError, match="broken.txt:3"):
        e2e.read_references(broken)


def test_input_checks():
    with pytest.raises(DataError):
        e2e.score_e2e(["a", "b"], [["a"]])
    with pytest.raises(DataError):
        e2e.score_e2e(["a"], [[]])
    with pytest.raises(DataError):
        e2e.score_e2e([], [])


@needs_java
def test_meteor_failure_keeps_rouge_and_cider(monkeypatch):
    def broken_meteor(*args, **kwargs):
        raise coco_caption.JavaMetricError("METEOR exited with 1: out of memory")

    monkeypatch.setattr(coco_caption, "meteor", broken_meteor)
    scores = coco_caption.caption_scores(["a small pub"], [["a small pub", "a pub"]])
    assert scores["METEOR"] is None
    assert scores["METEOR_unavailable"] == "METEOR exited with 1: out of memory"
    assert scores["ROUGE_L"] == pytest.approx(1.0)
    assert scores["CIDEr"] is not None


@needs_java
def test_missing_jar_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setattr(coco_caption, "find_pycocoevalcap", lambda: tmp_path)
    scores = coco_caption.caption_scores(["a pub"], [["a pub"]])
    for name in coco_caption.JAVA_METRICS:
        assert scores[name] is None
        assert "jar not found" in scores[f"{name}_unavailable"]


@needs_java
def test_java_timeouts_and_no_temp_files_left(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    java, package = coco_caption.find_java(), coco_caption.find_pycocoevalcap()
    tokenizer = package / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    # The real tokenizer: punctuation dropped, lowercased, "£" normalised by PTB to "#".
    assert coco_caption.ptb_tokenize(java, tokenizer, ["Prices: £20, near Café Rouge.", ""], timeout=120) == [
        "prices # 20 near café rouge",
        "",
    ]
    with pytest.raises(coco_caption.JavaMetricError, match="timed out"):
        coco_caption.ptb_tokenize(java, tokenizer, ["a b"], timeout=0.01)
    # METEOR needs seconds to load its paraphrase table, so 1 s always runs out.
    with pytest.raises(coco_caption.JavaMetricError, match="timed out after 1s"):
        coco_caption.meteor(java, package / "meteor" / "meteor-1.5.jar", ["a pub"], [["a pub"]], timeout=1)
    assert list(tmp_path.iterdir()) == []


def test_metric_modules_import_nothing_heavy():
    code = (
        "import sys, lorafit.eval.metrics, lorafit.eval.metrics.e2e, lorafit.eval.metrics.glue, lorafit.eval.metrics.wikisql\n"
        "heavy = ['torch', 'sacrebleu', 'sklearn', 'scipy', 'numpy', 'pycocoevalcap']\n"
        "print([name for name in heavy if name in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
