"""One table of transfer checks across exports: which sweep's answer holds at which held-out B.

``samplewise table exports/a.json exports/b.json ...`` (and ``make rules``, which runs the three
Adam rule sweeps first) prints, per constant, the answered formula, the regret at each held-out
batch size with its interval, and the verdict, as a Markdown table that pastes into a README.
"""

from __future__ import annotations

from typing import Any, Sequence


def _cell(check: dict[str, Any]) -> str:
    regret, (lo, hi) = check.get("regret"), check.get("regret_interval") or (None, None)
    if regret is None:
        return "diverged"
    bound = "" if lo is None or hi is None else f" [{lo:.1%}, {hi:.1%}]"
    edge = " (edge)" if check.get("best_at_bracket_edge") else ""
    return f"{regret:.1%}{bound}{edge}"


def rows(docs: Sequence[dict[str, Any]]) -> tuple[list[int], list[dict[str, Any]]]:
    """The held-out batch sizes over all exports, and one row per checked constant."""
    sizes: set[int] = set()
    out = []
    for doc in docs:
        for const in doc.get("constants", []):
            transfer = const.get("transfer")
            settings = const.get("settings") or {}
            row = {
                "sweep": doc.get("sweep", "?"),
                "optimizer": const["optimizer"],
                "reduction": const["reduction"],
                "rule": settings.get("rule") or "-",
                "formula": const.get("formula") or "no answer",
                "checks": {},
                "verdict": transfer["verdict"] if transfer else "not checked",
            }
            for check in (transfer or {}).get("checks", []):
                row["checks"][int(check["batch_size"])] = check
                sizes.add(int(check["batch_size"]))
            out.append(row)
    return sorted(sizes), out


def markdown(docs: Sequence[dict[str, Any]]) -> str:
    """The table: regret at each held-out B (mean over seeds, its interval), then the verdict."""
    sizes, table = rows(docs)
    head = ["sweep", "optimizer", "rule", "answer"] + [f"regret at B={b}" for b in sizes] + ["verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["sweep"], f"{r['optimizer']} {r['reduction']}", r["rule"], f"`{r['formula']}`"]
        cells += [_cell(r["checks"][b]) if b in r["checks"] else "-" for b in sizes]
        cells.append(r["verdict"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
