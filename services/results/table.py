"""The end-of-sweep text: the result table, each group's answer and verdict lines, the trial
outcomes and range-edge warnings (``samplewise sweep`` prints them, ``samplewise export`` too)."""

from __future__ import annotations

import math
from typing import Optional

from search_spaces.scaling import ADAPTIVE
from services.results.analysis import GroupSummary, TrialRecord, complete, trial_counts


def edge_warning(g: GroupSummary) -> Optional[str]:
    if g.range_edge is None or g.best is None or g.lr_range is None:
        return None
    return (
        f"{g.name}: the best LR per sample {g.best.lr_per_sample:.3g} sits at the {g.range_edge} edge of "
        f"the range searched [{g.lr_range[0]:.3g}, {g.lr_range[1]:.3g}]; widen lr_per_sample for "
        f"{g.optimizer} {'downwards' if g.range_edge == 'low' else 'upwards'}"
    )


def format_table(groups: list[GroupSummary]) -> str:
    """The end-of-sweep table: best config per optimizer x reduction (x schedule) with its LR per
    sample, then per group the verdict, the law and the formula, and any range-edge warning."""
    scheduled = any(g.schedule != "constant" for g in groups)
    sched = lambda g: f"{g.schedule:<13} " if scheduled else ""  # noqa: E731
    header = (
        f"{'optimizer':<9} {'reduction':<9} {'schedule':<13} " if scheduled else f"{'optimizer':<9} {'reduction':<9} "
    ) + (
        f"{'rule':<6} {'lr/sample c':>11} {'k':>4} {'best B':>6} "
        f"{'lr':>9} {'val loss':>9} {'val acc':>7}  trials (ok/stopped/diverged/failed)"
    )
    lines = [header, "-" * len(header)]
    for g in groups:
        c = g.counts
        trials = f"{c['total']} ({c['completed']}/{c['stopped_early']}/{c['diverged']}/{c['failed']})"
        lead = f"{g.optimizer:<9} {g.reduction:<9} {sched(g)}{g.rule:<6} "
        if g.best is None:
            lines.append(f"{lead}{'-':>11} {g.k:>4g} {'-':>6} {'-':>9} {'-':>9} {'-':>7}  {trials}")
            continue
        b = g.best
        acc = f"{b.val_accuracy:.3f}" if b.val_accuracy is not None else "-"
        edge = f"  <- at the {g.range_edge} edge" if g.range_edge else ""
        lines.append(  # k of the best trial's own reduction: lr = c * B**k on this line
            f"{lead}{b.lr_per_sample:>11.3e} {b.k:>4g} {b.batch_size:>6} "
            f"{b.lr:>9.3e} {b.val_loss:>9.4f} {acc:>7}  {trials}{edge}"
        )
    lines.append("")
    for g in groups:
        if g.answer is None:
            continue
        lines += answer_lines(g)
    warnings = [w for w in (edge_warning(g) for g in groups) if w]
    lines += [f"warning: {w}" for w in warnings]
    return "\n".join(lines).rstrip()


def loo_text(g: GroupSummary) -> str:
    """'leave-one-batch-size-out error 12% (rule 80%, power law 35%, saturating 12%)'."""
    if g.chosen is None or g.loo_score(g.chosen.key) is None:
        return "too few batch sizes with an optimum to leave one out"
    keys = [law.key for law in g.laws] + ([g.chosen.key] if g.chosen.residuals else [])
    label = lambda k: k.replace("+", " corrected")  # noqa: E731
    error = f"lr* error {math.expm1(g.loo_score(g.chosen.key) or 0.0):.0%}"
    regret = g.loo_regret(g.chosen.key)
    if regret is None:
        others = ", ".join(f"{label(k)} {math.expm1(v):.0%}" for k in keys if (v := g.loo_score(k)) is not None)
        return f"leave-one-batch-size-out {error} ({others})"
    others = ", ".join(f"{label(k)} {v:.1%}" for k in keys if (v := g.loo_regret(k)) is not None)
    return f"leave-one-batch-size-out regret {regret:.1%} ({others}), {error}"


def answer_lines(g: GroupSummary) -> list[str]:
    """The group's answer, the rule's verdict, the reductions' agreement and B_noise, for the
    end-of-sweep table and ``samplewise export``."""
    assert g.answer is not None
    a = g.answer
    lo, hi = a.batch_range
    lines = [f"{g.name}: {a.formula}  for B in {lo}..{hi}  [{a.source}; {loo_text(g)}]"]
    if len(g.reductions) > 1:
        lines[0] += "  (mean-equivalent LR; under sum SGD divides it by B)" if g.optimizer not in ADAPTIVE else ""
        agree = g.reductions_agree
        rows = len(g.agreement)
        if agree is not None:
            lines.append(
                f"    {' and '.join(g.reductions)} pooled (identical updates): their own lr* "
                + (
                    f"agree at all {rows} batch sizes"
                    if agree
                    else f"DISAGREE at {sum(not r['agree'] for r in g.agreement)} of {rows} batch sizes"
                )
            )
    lines.append(f"    rule ({g.rule}, k = {g.k_meq:g}): {g.verdict}")
    agree_noise, noise_law, measured = g.b_noise_agrees, g.b_noise_law, g.b_simple_range
    if agree_noise is not None and noise_law is not None and measured is not None:
        b_lo, b_hi = noise_law.intervals["b_noise"]
        span = f"[{'-' if b_lo is None else f'{b_lo:.3g}'}, {'-' if b_hi is None else f'{b_hi:.3g}'}]"
        fit = "LR fit" if noise_law is g.chosen else f"{noise_law.name} fit (not chosen)"
        lines.append(
            f"    B_noise from the {fit} {noise_law.params['b_noise']:.3g} {span} "
            f"{'agrees' if agree_noise else 'disagrees'} with B_simple measured {measured[0]:.3g}..{measured[1]:.3g}"
        )
    if g.counts.get("did_not_learn"):
        lines.append(f"    {g.counts['did_not_learn']} trial(s) did not learn (counted as tried, not fitted)")
    return lines


def format_outcomes(records: list[TrialRecord]) -> str:
    """One line of counts, then one line per failed trial with its error."""
    c = trial_counts(records)
    lines = [
        f"{c['total']} trials: {c['completed']} completed, {c['stopped_early']} stopped early by ASHA, "
        f"{c['diverged']} diverged, {c['failed']} failed" + (f", {c['killed']} killed" if c["killed"] else "")
    ]
    missing = sum(not complete(r) for r in records)
    if missing:
        lines.append(
            f"  {missing} run(s) without their params (cut off before the first write) left out of the analysis"
        )
    for r in records:
        if r.status == "FAILED":
            lines.append(f"  failed {r.trial_id} ({r.optimizer}, {r.reduction}, B={r.batch_size}): {r.error}")
    return "\n".join(lines)
