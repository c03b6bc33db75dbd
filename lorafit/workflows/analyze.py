"""`lorafit analyze`: what a trained adapter learned, in the LoRA paper's section 7 terms.

    TARGET (adapter dir, or run dir -> <run>/adapter) -> read_factors -> factor_svd per layer
        -> [--model: load the base, amplification per layer]      spectrum, effective ranks, norms
        -> [--compare B: phi per shared layer]                      report (by target, by depth, advice)
        -> [--truncate-rank K: best rank-K adapter in <DIR>/adapter-rK]
        -> [-o DIR: analysis.json + spectra.png, norms.png, phi.png]

Only the adapter file is read unless `model` is given (the amplification factor needs W), or the
adapter is DoRA: its update is W' - W = m / ||W + s B A||_row (W + s B A) - W (lorafit/lora/dora.py),
which needs the base weights (`model`, else the base the adapter names) and is not a rank-r product.
"""

from __future__ import annotations

import json
from pathlib import Path

from lorafit.analysis.amplification import amplification, base_weight
from lorafit.analysis.factors import AdapterFactors, read_factors
from lorafit.analysis.plots import plot_report
from lorafit.analysis.report import build_report, compare_section
from lorafit.analysis.similarity import SIDES, compare_adapters
from lorafit.analysis.spectrum import dense_svd, factor_svd
from lorafit.analysis.truncate import truncate_adapter
from lorafit.errors import EXIT_BAD_INPUT, AdapterError, LorafitError
from lorafit.lora.dora import dora_merged_weight
from lorafit.models import load_base, resolve_model
from lorafit.models.loader import adapter_base_ref
from lorafit.runs.atomic import write_text_atomic

REPORT_FILE = "analysis.json"


class AnalyzeOptionError(LorafitError):
    """Options that do not fit together (e.g. --truncate-rank without -o): bad input, exit 2."""

    exit_code = EXIT_BAD_INPUT


def truncated_dir(output_dir: Path, rank: int) -> Path:
    """Where `--truncate-rank K -o DIR` writes the cut adapter."""
    return output_dir / f"adapter-r{rank}"


def _num_labels(factors: AdapterFactors) -> int:
    """0 for a causal LM; a classifier's label count from lorafit's metadata or the saved head (else 2).

    Only the adapted layers' frozen weights are read, so the head's size only has to let the base load.
    """
    if factors.config.get("task_type") != "SEQ_CLS":
        return 0
    if factors.metadata.get("lorafit_num_labels", "").isdigit():
        return int(factors.metadata["lorafit_num_labels"])
    heads = [t for k, t in factors.other.items() if k.endswith(("classifier.weight", "out_proj.weight", "score.weight"))]
    return heads[-1].shape[0] if heads else 2


def load_analysis_base(factors: AdapterFactors, model: str | None):
    """The base model: `model` (alias, path or HF id), else the one the adapter names."""
    ref = resolve_model(model) if model is not None else adapter_base_ref(factors.config, factors.metadata, str(factors.directory))
    base, _ = load_base(ref, _num_labels(factors))
    return base


def layer_svds(factors: AdapterFactors, base) -> dict:
    """ΔW's SVD per layer: from the factors (s B A), or for DoRA densely from W' - W (needs `base`)."""
    if factors.variant != "dora":
        return {layer.name: factor_svd(layer.a, layer.b, layer.scale) for layer in factors.layers}
    svds = {}
    for layer in factors.layers:
        try:
            w = base_weight(base, layer.name, layer.shape)  # (d_out, d_in) float64
        except AdapterError as e:
            raise AdapterError(f"{factors.directory}: {e}") from None
        merged = dora_merged_weight(w, layer.a.double(), layer.b.double(), layer.scale, layer.magnitude.double())
        svds[layer.name] = dense_svd(merged - w)
    return svds


def layer_amplifications(factors: AdapterFactors, svds: dict, base) -> dict[str, dict]:
    """Table 7's numbers for every adapted layer, against the loaded `base`."""
    result = {}
    for layer in factors.layers:
        try:
            w = base_weight(base, layer.name, layer.shape)
        except AdapterError as e:
            raise AdapterError(f"{factors.directory}: {e}") from None
        result[layer.name] = amplification(svds[layer.name], w)
    return result


def run_analyze(
    target: str | Path,
    model: str | None = None,
    output_dir: str | Path | None = None,
    compare: str | Path | None = None,
    truncate_rank: int | None = None,
    side: str = "input",
) -> dict:
    """Analyse the adapter at `target`; returns the JSON-serialisable report (see analysis/report.py).

    model: base model for the amplification factor. compare: a second adapter or run for phi.
    truncate_rank: write the best rank-K adapter into `<output_dir>/adapter-rK` (needs output_dir).
    side: "input" (the paper's: right-singular vectors of A) or "output" (left-singular of B) for phi.
    """
    if side not in SIDES:
        raise AnalyzeOptionError(f"--side: must be one of {', '.join(SIDES)}, got {side!r}")
    if truncate_rank is not None and output_dir is None:
        raise AnalyzeOptionError("--truncate-rank: needs -o DIR (the cut adapter is written to DIR/adapter-rK)")
    output = Path(output_dir) if output_dir is not None else None
    if output is not None and output.exists() and not output.is_dir():
        raise AnalyzeOptionError(f"{output}: exists and is not a directory")
    factors = read_factors(target)
    other = read_factors(compare) if compare is not None else None  # fail on a bad B before the slow parts
    if truncate_rank is not None and not 1 <= truncate_rank <= factors.rank:
        raise AdapterError(f"--truncate-rank: must be between 1 and the adapter's rank {factors.rank}, got {truncate_rank}")

    if truncate_rank is not None and (factors.variant == "dora" or factors.patterned):
        what = "a DoRA adapter (its update W' - W is not a rank-r product)" if factors.variant == "dora" else \
            "an adapter with rank_pattern / alpha_pattern"
        raise AnalyzeOptionError(f"--truncate-rank: not supported for {what}")
    base = load_analysis_base(factors, model) if model is not None or factors.variant == "dora" else None
    svds = layer_svds(factors, base)
    amps = layer_amplifications(factors, svds, base) if model is not None else None
    report = build_report(factors, svds, amps)
    if other is not None:
        report["compare"] = compare_section(compare_adapters(factors, other, side), factors, other, side)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        if truncate_rank is not None:
            report["truncation"] = truncate_adapter(factors, truncate_rank, truncated_dir(output, truncate_rank), svds)
        try:
            pngs = plot_report(report, output)
        except OSError as e:
            raise LorafitError(f"{output}: cannot write plots ({e.strerror or e})") from None
        report["files"] = [str(output / REPORT_FILE), *map(str, pngs)]
        write_text_atomic(output / REPORT_FILE, json.dumps(report, indent=1) + "\n")
    return report
