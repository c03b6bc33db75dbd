"""A sweep's answer from its trial rows (study.trial_row): the order by objective, the best trial,
the terminal table and sweep.json's content."""

from __future__ import annotations

import math

STATE_ORDER = {"complete": 0, "pruned": 1, "running": 2, "failed": 3, "waiting": 4}


def ranked(rows: list[dict], direction: str) -> list[dict]:
    """Complete trials best first, then pruned (by their last value), running, failed."""
    sign = 1 if direction == "minimize" else -1

    def key(row: dict) -> tuple:
        value = row["objective"]
        return (STATE_ORDER.get(row["state"], 5), math.inf if value is None else sign * value, row["number"])

    return sorted(rows, key=key)


def best_row(rows: list[dict], direction: str) -> dict | None:
    """The best complete trial (a pruned trial stopped early: it never competes for best)."""
    complete = [r for r in ranked(rows, direction) if r["state"] == "complete" and r["objective"] is not None]
    return complete[0] if complete else None


def show_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_rows(rows: list[dict], keys: list[str], direction: str) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of the terminal table, sorted by objective."""
    columns = ["trial", "state", "objective", *[k.rpartition(".")[2] for k in keys], "steps", "seconds"]
    out = []
    for row in ranked(rows, direction):
        objective = "" if row["objective"] is None else f"{row['objective']:.4f}"
        out.append([f"{row['number']:03d}", row["state"], objective,
                    *[show_value(row["params"].get(k)) for k in keys],
                    show_value(row["steps"]), show_value(round(row["seconds"]) if row["seconds"] else None)])
    return columns, out


def compute_used(rows: list[dict]) -> dict:
    """Optimizer steps and seconds over every trial: what the sweep cost."""
    return {"steps": sum(r["steps"] or 0 for r in rows),
            "seconds": round(sum(r["seconds"] or 0 for r in rows), 1),
            "trials": len(rows),
            "by_state": {s: sum(r["state"] == s for r in rows) for s in STATE_ORDER if any(r["state"] == s for r in rows)}}
