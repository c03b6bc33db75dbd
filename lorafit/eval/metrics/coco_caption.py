"""METEOR, ROUGE-L and CIDEr exactly as the E2E official script gets them from the MS-COCO caption code.

The official pipeline (pycocoevalcap's `COCOEvalCap`, which pycocoevalcap==1.2 reproduces):
1. PTB-tokenise references and hypotheses with Stanford CoreNLP 3.4.1
   (`PTBTokenizer -preserveLines -lowerCase`, one sentence per line), then drop punctuation tokens;
2. METEOR 1.5 (`meteor-1.5.jar - - -stdio -l en -norm`): one `SCORE` line per segment gives its
   statistics, one `EVAL` line over all of them gives the corpus score;
3. ROUGE-L and CIDEr: pycocoevalcap's pure-Python scorers on the tokenised text.

We use the jars shipped in the pycocoevalcap wheel and its Rouge and Cider classes, but drive the
two Java programs ourselves: pycocoevalcap's wrappers have no timeouts (a stuck JVM hangs the
caller), write their temporary file next to the jar (inside site-packages), never read METEOR's
stderr (a chatty JVM can fill the pipe and block), and raise bare exceptions.

Everything needs `java`: when it is missing or a Java step fails, the affected metrics are `None`
and `<NAME>_unavailable` carries a one-line reason. Nothing here raises for a Java problem.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

JAVA_METRICS = ("METEOR", "ROUGE_L", "CIDEr")
DEFAULT_TIMEOUT_S = 600.0

# pycocoevalcap's PTBTokenizer drops these tokens after tokenising.
_PUNCTUATION_TOKENS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


class JavaMetricError(Exception):
    """A Java step could not produce a result (missing jar, crash, timeout, unexpected output)."""


def find_java() -> str | None:
    """Path of the `java` executable on PATH, or None. Looked up on every call (tests hide it)."""
    return shutil.which("java")


def find_pycocoevalcap() -> Path | None:
    """Directory of the installed pycocoevalcap package (holding the jars), without importing it."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _stderr_tail(stderr: bytes | str | None) -> str:
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", errors="replace")
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no error output"


def ptb_tokenize(java: str, jar: Path, sentences: Sequence[str], timeout: float) -> list[str]:
    """Lowercased PTB tokens of each sentence, punctuation removed, as pycocoevalcap 1.2 does it."""
    if not jar.is_file():
        raise JavaMetricError(f"Stanford CoreNLP jar not found at {jar}")
    # Like pycocoevalcap: one sentence per line, in a file (not stdin), line breaks inside a
    # sentence become spaces.
    text = "\n".join(s.replace("\n", " ") for s in sentences)
    with tempfile.TemporaryDirectory(prefix="lorafit-ptb-") as tmp:
        path = Path(tmp) / "sentences.txt"
        path.write_text(text, encoding="utf-8")
        cmd = [
            java,
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
            str(path),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            raise JavaMetricError(f"PTB tokenizer timed out after {timeout:g}s") from err
        except OSError as err:
            raise JavaMetricError(f"cannot run java for the PTB tokenizer: {err}") from err
    if done.returncode != 0:
        raise JavaMetricError(f"PTB tokenizer exited with {done.returncode}: {_stderr_tail(done.stderr)}")
    lines = done.stdout.decode("utf-8").split("\n")
    # -preserveLines gives one output line per input line; anything else would misalign the
    # references with their segments, which pycocoevalcap's zip() would hide.
    if len(lines) < len(sentences) or any(line.strip() for line in lines[len(sentences) :]):
        raise JavaMetricError(f"PTB tokenizer returned {len(lines)} lines for {len(sentences)} sentences")
    return [
        " ".join(w for w in line.rstrip().split(" ") if w not in _PUNCTUATION_TOKENS)
        for line in lines[: len(sentences)]
    ]


class _MeteorProcess:
    """The METEOR jar in -stdio mode, killed by a watchdog once its wall-clock budget is spent."""

    def __init__(self, cmd: list[str], cwd: Path, timeout: float):
        self.timeout = timeout
        # stderr goes to a file we read only on failure: a pipe nobody drains can block the JVM.
        self.stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr
            )
        except OSError:
            self.stderr.close()
            raise
        self.timed_out = threading.Event()
        self.watchdog = threading.Timer(timeout, self._kill_on_timeout)
        self.watchdog.daemon = True
        self.watchdog.start()

    def _kill_on_timeout(self) -> None:
        self.timed_out.set()
        self.proc.kill()

    def ask(self, line: str, answers: int = 1) -> list[str]:
        """Send one line, read `answers` lines back."""
        try:
            self.proc.stdin.write(line.encode("utf-8") + b"\n")
            self.proc.stdin.flush()
            replies = [self.proc.stdout.readline() for _ in range(answers)]
        except (BrokenPipeError, ValueError, OSError):
            replies = [b""]
        if any(not reply for reply in replies):  # EOF: the process died or was killed
            raise JavaMetricError(self._failure())
        return [reply.decode("utf-8").strip() for reply in replies]

    def _failure(self) -> str:
        if self.timed_out.is_set():
            return f"METEOR timed out after {self.timeout:g}s"
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return "METEOR stopped answering (its output closed early)"
        self.stderr.seek(0)
        return f"METEOR exited with {self.proc.returncode}: {_stderr_tail(self.stderr.read())}"

    def close(self) -> None:
        self.watchdog.cancel()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc.kill()
        self.proc.wait()
        self.stderr.close()


def meteor(
    java: str, jar: Path, hypotheses: Sequence[str], references: Sequence[Sequence[str]], timeout: float
) -> float:
    """Corpus METEOR 1.5 (en, -norm) of tokenised hypotheses, via pycocoevalcap's protocol."""
    if not jar.is_file():
        raise JavaMetricError(f"METEOR jar not found at {jar}")
    # Same command as pycocoevalcap; its cwd is the jar's directory (data/paraphrase-en.gz).
    cmd = [java, "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
    try:
        process = _MeteorProcess(cmd, cwd=jar.parent, timeout=timeout)
    except OSError as err:
        raise JavaMetricError(f"cannot run java for METEOR: {err}") from err
    try:
        stats = []
        for hyp, refs in zip(hypotheses, references, strict=True):
            # pycocoevalcap cleans the hypothesis only: "|||" is the protocol's field separator.
            hyp = hyp.replace("|||", "").replace("  ", " ")
            stats.append(process.ask(" ||| ".join(("SCORE", " ||| ".join(refs), hyp)))[0])
        # EVAL answers one score per segment, then the corpus score.
        replies = process.ask(" ||| ".join(["EVAL", *stats]), answers=len(stats) + 1)
    finally:
        process.close()
    try:
        return float(replies[-1])
    except ValueError as err:
        raise JavaMetricError(f"METEOR printed {replies[-1][:80]!r} instead of a score") from err


def caption_scores(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], timeout: float = DEFAULT_TIMEOUT_S
) -> dict:
    """METEOR, ROUGE_L and CIDEr of hypotheses vs per-segment reference lists.

    Returns the three values (floats), or for each one that could not be computed `None` plus
    `<NAME>_unavailable` with the reason. `timeout` bounds each Java program's wall-clock time.
    """
    scores: dict = {}

    def unavailable(names: Sequence[str], reason: str) -> dict:
        for name in names:
            scores[name] = None
            scores[f"{name}_unavailable"] = reason
        return scores

    java = find_java()
    if java is None:
        return unavailable(
            JAVA_METRICS, "java not found on PATH (METEOR, ROUGE_L and CIDEr need its PTB tokenizer)"
        )
    package = find_pycocoevalcap()
    if package is None:
        return unavailable(JAVA_METRICS, "pycocoevalcap is not installed (pip install pycocoevalcap==1.2)")

    # References and hypotheses are tokenised in separate runs, as COCOEvalCap does.
    try:
        jar = package / "tokenizer" / "stanford-corenlp-3.4.1.jar"
        flat_refs = ptb_tokenize(java, jar, [ref for refs in references for ref in refs], timeout)
        hyps = ptb_tokenize(java, jar, hypotheses, timeout)
    except JavaMetricError as err:
        return unavailable(JAVA_METRICS, str(err))
    refs, start = [], 0
    for group in references:
        refs.append(flat_refs[start : start + len(group)])
        start += len(group)

    try:
        scores["METEOR"] = meteor(java, package / "meteor" / "meteor-1.5.jar", hyps, refs, timeout)
    except JavaMetricError as err:
        unavailable(["METEOR"], str(err))

    # Imported here: pycocoevalcap pulls numpy and is not needed unless we score.
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: group for i, group in enumerate(refs)}
    res = {i: [hyp] for i, hyp in enumerate(hyps)}
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores
