"""The analysis of one adapter as a JSON-serialisable dict, the terminal tables drawn from it, and advice.

    {"adapter", "rank", "scale", "layers": [per layer: name, target, depth, shape, norm,
     singular_values, energy, rank90, rank99, amplification?],
     "total": {...}, "by_target": {...}, "by_depth": {...}, "advice": {...},
     "compare"?: {...}, "truncation"?: {...}, "files"?: [...]}

Norms add as energies: a group's ||ΔW||_F is sqrt(sum of its layers' ||ΔW||_F^2) (the Frobenius norm of
all its updates stacked), and its share is its part of the adapter's total energy. The advice follows
the LoRA paper's section 7.2 reading: the rank a layer needs is its effective rank, and the rank an
adapter needs is the largest over its layers (one rank per adapter, as PEFT stores it).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from lorafit.analysis.factors import AdapterFactors
from lorafit.analysis.similarity import phi_summary
from lorafit.analysis.spectrum import FactorSVD, spectrum_summary


def layer_records(factors: AdapterFactors, svds: dict[str, FactorSVD], amplifications: dict[str, dict] | None = None) -> list[dict]:
    """One record per adapted layer, in the adapter's order."""
    records = []
    for layer in factors.layers:
        record = {"name": layer.name, "target": layer.target, "depth": layer.depth, "shape": list(layer.shape),
                  **spectrum_summary(svds[layer.name].s)}
        if amplifications is not None:
            record["amplification"] = amplifications[layer.name]
        records.append(record)
    return records


def group_records(records: list[dict], key: str) -> dict[str, dict]:
    """Layers grouped by `key` ("target" or "depth"): combined norm, energy share, effective ranks."""
    total = sum(r["norm"] ** 2 for r in records)
    groups: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        groups[str(record[key])].append(record)
    result = {}
    for name, members in groups.items():
        energy = sum(r["norm"] ** 2 for r in members)
        entry = {
            "layers": len(members),
            "norm": math.sqrt(energy),
            "energy_share": energy / total if total > 0 else 0.0,
            "rank90_max": max(r["rank90"] for r in members),
            "rank99_max": max(r["rank99"] for r in members),
            "rank90_mean": sum(r["rank90"] for r in members) / len(members),
        }
        factors = [r["amplification"]["factor"] for r in members if "amplification" in r]
        if factors:
            entry["amplification_mean"] = sum(factors) / len(factors)
        result[name] = entry
    return result


def overall_rank(records: list[dict], level: float) -> int:
    """Smallest K whose rank-K truncation keeps >= `level` of the adapter's total ||ΔW||_F^2 (0 if ΔW = 0)."""
    energies = [r["norm"] ** 2 for r in records]
    total = sum(energies)
    if total == 0:
        return 0
    for k in range(1, max(len(r["energy"]) for r in records) + 1):
        kept = sum(e * r["energy"][min(k, len(r["energy"])) - 1] for e, r in zip(energies, records, strict=True))
        if kept >= level * total - 1e-12:
            return k
    return max(len(r["energy"]) for r in records)


def advice(records: list[dict], by_target: dict[str, dict], rank: int) -> dict:
    """The smallest rank keeping >= 90 % / 99 % of ||ΔW||_F^2 in every layer (and of the whole adapter),
    and which targets carry the update."""
    rank90 = max(r["rank90"] for r in records)
    rank99 = max(r["rank99"] for r in records)
    overall90, overall99 = overall_rank(records, 0.90), overall_rank(records, 0.99)
    worst = max(records, key=lambda r: (r["rank99"], r["norm"]))
    ordered = sorted(by_target.items(), key=lambda kv: -kv[1]["energy_share"])
    shares = ", ".join(f"{name} {entry['energy_share']:.0%}" for name, entry in ordered)
    lines = [
        f"rank {rank90} keeps >= 90% of the update energy (||ΔW||_F^2) in every layer, rank {rank99} keeps >= 99% "
        f"(the adapter has rank {rank}; `--truncate-rank K` writes the cut adapter, `lorafit eval` tells what it costs)",
        f"over the whole adapter, rank {overall90} keeps >= 90% and rank {overall99} >= 99% of the summed energy",
        f"the layer needing the most rank: {worst['name']} (rank {worst['rank99']} for 99%)",
        f"update energy by target: {shares}",
    ]
    return {"rank_for_90": rank90, "rank_for_99": rank99, "overall_rank_for_90": overall90,
            "overall_rank_for_99": overall99, "hardest_layer": worst["name"],
            "targets_by_energy": [name for name, _ in ordered], "lines": lines}


def build_report(factors: AdapterFactors, svds: dict[str, FactorSVD], amplifications: dict[str, dict] | None = None) -> dict:
    """The whole single-adapter analysis (JSON-serialisable)."""
    records = layer_records(factors, svds, amplifications)
    energy = sum(r["norm"] ** 2 for r in records)
    by_target = group_records(records, "target")
    total = {"layers": len(records), "norm": math.sqrt(energy), "energy": energy,
             "rank90_max": max(r["rank90"] for r in records), "rank99_max": max(r["rank99"] for r in records)}
    if amplifications is not None:
        total["amplification_mean"] = sum(a["factor"] for a in amplifications.values()) / len(amplifications)
    return {
        "adapter": str(factors.directory),
        "rank": factors.rank,
        "scale": factors.scale,
        "variant": factors.variant,  # "dora": each ΔW is W' - W (dense), not s B A
        "layers": records,
        "total": total,
        "by_target": by_target,
        "by_depth": group_records(records, "depth"),
        "advice": advice(records, by_target, factors.rank),
    }


def compare_section(phis: dict[str, torch.Tensor], first: AdapterFactors, second: AdapterFactors, side: str) -> dict:
    """phi per shared layer (eq. 4), its mean over layers, and per target the mean phi(1,1) and phi(i,i)."""
    layers = {name: phi_summary(phi) for name, phi in phis.items()}
    mean = torch.stack(list(phis.values())).mean(0)
    names = first.layer_map()
    by_target: dict[str, list[str]] = defaultdict(list)
    for name in phis:
        by_target[names[name].target].append(name)
    targets = {}
    for target, members in by_target.items():
        diag = torch.stack([torch.diagonal(phis[n]) for n in members]).mean(0)
        targets[target] = {"layers": len(members), "phi_1_1_mean": float(diag[0]), "diagonal_mean": [float(x) for x in diag]}
    return {
        "other": str(second.directory),
        "ranks": [first.rank, second.rank],
        "side": side,
        "shared_layers": len(phis),
        "layers": layers,
        "mean": phi_summary(mean),
        "by_target": targets,
    }


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def report_tables(report: dict) -> list[tuple[str, list[str], list[list]]]:
    """(title, columns, rows) for the terminal: by target, by depth, comparison, truncation."""
    amp = "amplification_mean" in report["total"]
    columns = ["layers", "||ΔW||_F", "energy", "rank@90%", "rank@99%"] + (["amplification"] if amp else [])

    def rows(groups: dict[str, dict]) -> list[list]:
        return [[name, g["layers"], _fmt(g["norm"]), f"{g['energy_share']:.1%}", g["rank90_max"], g["rank99_max"]]
                + ([_fmt(g["amplification_mean"])] if amp else []) for name, g in groups.items()]

    total = report["total"]
    total_row = ["all", total["layers"], _fmt(total["norm"]), "100.0%", total["rank90_max"], total["rank99_max"]]
    total_row += [_fmt(total["amplification_mean"])] if amp else []
    tables = [
        (f"{report['adapter']} (rank {report['rank']}, scale {_fmt(report['scale'])}): by target",
         ["target", *columns], [*rows(report["by_target"]), total_row]),
        ("by depth (layer index; rank = largest in the group)", ["depth", *columns], rows(report["by_depth"])),
    ]
    if "compare" in report:
        c = report["compare"]
        i = min(c["ranks"])
        tables.append((
            f"subspace similarity phi with {c['other']} ({c['side']} side, r={c['ranks'][0]} vs r={c['ranks'][1]})",
            ["target", "layers", "phi(1,1)", f"phi({i},{i})"],
            [[t, g["layers"], _fmt(g["phi_1_1_mean"]), _fmt(g["diagonal_mean"][-1])] for t, g in c["by_target"].items()],
        ))
    if "truncation" in report:
        t = report["truncation"]
        low = min(t["layers"], key=lambda x: x["energy_kept"])
        tables.append((f"truncated to rank {t['rank']} (lora_alpha {t['lora_alpha']}): {t['directory']}",
                       ["energy kept", "lowest layer", "its energy kept"],
                       [[f"{t['energy_kept']:.2%}", low["name"], f"{low['energy_kept']:.2%}"]]))
    return tables
