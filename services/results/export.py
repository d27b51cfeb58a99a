"""Exports a sweep's tuned LR-per-sample constants (read back by :mod:`services.results.lookup`).

``exports/<sweep>.json`` and ``.yaml`` hold, per optimizer x reduction (x schedule):

- ``formula``: what to use at any batch size, from the law that predicted left-out batch
  sizes best over the whole swept range (``answer`` says which, with bootstrap draws for the
  interval of lr at any B); reductions whose updates the rule makes identical share one
  answer (``pooled_with``), each in its own optimizer LR;
- ``leave_one_out``: per swept batch size, lr* measured and each law's prediction from the
  others and what each prediction costs there (``answer.loo_regret``, ``answer.loo_error``);
- ``transfer``: the held-out check (:mod:`services.results.transfer`), when it ran for this
  answer: per held-out batch size the answered LR, the best LR of the bracket around it and
  the regret with its interval, and the verdict;
- ``rule``: the scaling rule's verdict, and the batch sizes it holds for (only when it does);
- ``laws``: every law fitted, and B_noise beside the measured B_simple;
- the evidence: lr*(B) with intervals, best LR and val loss per batch size, the best trial
  (with its held-out test metrics), trial counts, edge warnings, sweep and parent run id.

Both files are also logged as artifacts of the sweep's parent run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml

from search_spaces.scaling import lr_exponent
from services import metrics as m
from services.errors import ExportError
from services.results import summary
from services.results.analysis import GroupSummary, TrialRecord, summarize
from services.results.critical import CriticalBatch, critical_batch, critical_doc, with_b_simple
from services.results.fit import CI
from services.results.laws import LOBO_MARGIN, REGRET_FLOOR, LawFit
from services.results.records import (
    best_histories,
    find_parent_run,
    load_records,
    loss_curves,
    metric_histories,
    read_transfers,
    sweep_spec,
)
from services.results.settings import settings_doc
from services.results.table import edge_warning
from services.results.transfer import Transfer
from services.tracking.store import client_for

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

EXPORT_VERSION = 4


def _law_doc(law: LawFit, draws: bool = False) -> dict[str, Any]:
    doc = {
        "name": law.name,
        "formula": law.formula,
        "params": law.params,
        "intervals": {k: list(v) for k, v in law.intervals.items()},
        "shift": law.shift,
        "batch_sizes": list(law.batch_sizes),
        "chi2": law.chi2,
    }
    if draws and law.draws:
        doc["draws"] = [list(d) for d in law.draws]
    if law.residuals:
        doc["residuals"] = [[round(math.exp(x)), r] for x, r in law.residuals]
    return doc


def _answer_doc(g: GroupSummary, reduction: str) -> Optional[dict[str, Any]]:
    answer = g.answer
    if answer is None:
        return None
    law = answer.for_reduction(g.optimizer, reduction, g.rule)
    score = g.loo_score(law.key) if answer.source != "best trial" else None
    return {
        **_law_doc(law, draws=True),
        "source": answer.source,
        "batch_range": list(answer.batch_range),
        "loo_error": math.expm1(score) if score is not None else None,
        "loo_regret": g.loo_regret(law.key) if answer.source != "best trial" else None,
    }


def _transfer_doc(g: GroupSummary, reduction: str, t: Optional[Transfer]) -> Optional[dict[str, Any]]:
    """The transfer check of the group's answer, with each LR in ``reduction``'s optimizer LR."""
    if t is None or g.answer is None:
        return None
    law = g.answer.for_reduction(g.optimizer, reduction, g.rule)
    scale = lambda b: law.lr(b) / g.answer.law.lr(b)  # noqa: E731 - optimizer LR / mean-equivalent
    return {
        "verdict": t.verdict,
        "tolerance": t.checks[0].tolerance,
        "batch_range": list(t.batch_range or ()),
        "checks": [
            {
                "batch_size": c.batch_size,
                "trained_with": c.reduction,
                "answered_lr": c.answered_lr * scale(c.batch_size),
                "best_lr": c.best_lr * scale(c.batch_size),
                "best_factor": 2.0**c.best_factor,
                "regret": c.regret if math.isfinite(c.regret) else None,
                "regret_interval": [v if math.isfinite(v) else None for v in c.interval],
                "seeds": c.seeds,
                "val_loss_per_factor": {f"{2.0**f:g}": (v if math.isfinite(v) else None) for f, v in c.losses.items()},
                "best_at_bracket_edge": c.at_edge,
                "verdict": c.verdict,
            }
            for c in sorted(t.checks, key=lambda c: c.batch_size)
        ],
    }


def _space_values(spec, params: dict[str, str]) -> dict[str, Any]:
    """What the trials' optimizer settings were derived from: the spec's, or (a run without its
    spec file) the parent run's params."""
    if spec is not None:
        sp = spec.space
        return {
            "reference_batch_size": sp.ref_batch_size,
            "betas": list(sp.betas),
            "eps": sp.eps,
            "weight_decay": sp.weight_decay.value,
            "decoupled_decay": sp.weight_decay.mode == "decoupled",
            "decay_tie": sp.weight_decay.tie,
            "momentum": sp.momentum,
            "warmup_samples": spec.schedule.warmup_samples,
        }
    sizes = [int(b) for b in params.get("space.batch_sizes", "1").strip("[]").split(",") if b.strip()]
    return {
        "reference_batch_size": min(sizes or [1]),
        "betas": [0.9, 0.999],
        "eps": float(params.get("space.eps", "1e-8")),
        "weight_decay": float(params.get("space.weight_decay.value", "0")),
        "decoupled_decay": params.get("space.weight_decay.mode") == "decoupled",
        "decay_tie": "fixed",
        "momentum": float(params.get("space.momentum", "0.9")),
        "warmup_samples": 0,
    }


def _n_train(spec, parent: "Run") -> Optional[int]:
    tag = parent.data.tags.get(m.TAG_N_TRAIN)
    if tag:
        return int(tag)
    budget = int(parent.data.tags.get(m.TAG_BUDGET_SAMPLES, 0))
    epochs = spec.budget.epochs if spec is not None else None
    return round(budget / epochs) if budget and epochs else None


def _group_docs(
    g: GroupSummary,
    spec_params: dict[str, str],
    test: Optional[dict] = None,
    transfer: Optional[Transfer] = None,
    space: Optional[dict[str, Any]] = None,
    n_train: Optional[int] = None,
    critical: Optional[CriticalBatch] = None,
) -> list[dict[str, Any]]:
    """One constant per reduction of the group: pooled reductions share the answer, each in
    its own optimizer LR (and its own eps, weight decay and k)."""
    reductions = g.reductions or (g.reduction,)
    docs = []
    for red in reductions:
        evidence = _evidence_doc(g)
        answer = _answer_doc(g, red)
        doc: dict[str, Any] = {
            "optimizer": g.optimizer,
            "reduction": red,
            "schedule": g.schedule,
            "k": lr_exponent(g.optimizer, red, g.rule),
            "pooled_with": [r for r in reductions if r != red],
            "lr_per_sample": g.lr_per_sample,
            "lr_per_sample_interval": list(g.rule_c[1:]) if g.rule_c else None,
            "formula": answer["formula"] if answer else None,
            "answer": answer,
            "transfer": _transfer_doc(g, red, transfer),
            "batch_sizes_swept": [b.batch_size for b in g.per_batch],
            "per_batch_size": [asdict(b) for b in g.per_batch],
            "trials": g.counts,
        }
        values = space or _space_values(None, spec_params)
        # the decay's timescale from the mean-equivalent LR: a tied sum SGD's LR is over B, its decay times B
        lr_ref = g.answer.law.lr(values["reference_batch_size"]) if g.answer else None
        doc["settings"] = settings_doc(g.optimizer, red, g.rule, values, n_train, values["warmup_samples"], lr_ref)
        if critical is not None:
            doc["batch"] = critical_doc(critical)
        for name in ("eps", "weight_decay"):
            if name in doc["settings"]["formulas"]:
                doc[name] = doc["settings"]["formulas"][name]
        if g.best:
            b = g.best
            doc["best"] = {
                "batch_size": b.batch_size,
                "reduction": b.reduction,
                "lr": b.lr,
                "lr_per_sample": b.lr_per_sample,
                "val_loss_per_sample": b.val_loss,
                "val_accuracy": b.val_accuracy,
                "samples_seen": b.samples_seen,
                "run_id": b.run_id,
                "b_simple": b.b_simple,
                **(test or {}),
            }
        doc.update(evidence)
        docs.append(doc)
    return docs


def _evidence_doc(g: GroupSummary) -> dict[str, Any]:
    """Does the rule hold, which law fits, lr*(B) with intervals, B_noise against B_simple."""
    b_simple = g.b_simple
    warnings = [
        f"batch size {o.batch_size}: the best LR tried is at the edge of the range searched; widen it"
        for o in g.optima
        if o.on_edge
    ]
    range_warning = edge_warning(g)
    if range_warning:
        warnings.insert(0, range_warning)
    doc: dict[str, Any] = {
        "verdict": g.verdict,
        "rule": {
            "name": g.rule,
            "k": g.k_meq,
            "k_in": "the mean-equivalent LR (the LR of a mean-reduced loss)",
            "verdict": g.verdict,
            "holds_for": list(g.holds_for) if g.holds_for else None,
            "checked_over": list(g.law.batch_sizes) if g.law else [],
            "above_checked_range": g.above_range,
            "c": g.rule_c[0] if g.rule_c else None,
            "c_interval": list(g.rule_c[1:]) if g.rule_c else None,
            "fitted_k": g.law.k if g.law else None,
            "fitted_k_interval": [g.law.k_lo, g.law.k_hi] if g.law else None,
            "confidence": CI,
        },
        "laws": [
            {
                **_law_doc(law),
                "loo_error": math.expm1(s) if (s := g.loo_score(law.name)) is not None else None,
                "loo_regret": g.loo_regret(law.name),
                "loo_regret_corrected": g.loo_regret(law.name + "+"),
            }
            for law in g.laws
        ],
        "chosen_law": g.chosen.key if g.chosen else None,
        "law_criterion": (
            "leave one batch size out: each law fitted to the other batch sizes' lr* predicts the "
            "left-out one's, and costs what the measured U-curve there says that LR costs (val loss "
            "over the best, minus 1); the law with the smallest mean regret, a later of rule, power, "
            f"saturating, surge only when its regret is below the earlier's / {LOBO_MARGIN:g} and lower by "
            f"more than {REGRET_FLOOR:.1%}; then the chosen law corrected to the swept optima "
            "(interpolated between them, fading over one octave beyond the ends) replaces it on the same terms"
        ),
        "leave_one_out": [
            {
                "batch_size": h.batch_size,
                "measured": h.measured,
                "measured_interval": list(h.measured_interval),
                "predicted": dict(h.predicted),
                "regret_of_predicted": {k: h.regret(k) for k in h.predicted} if h.curve else None,
            }
            for h in g.holdouts
        ],
        "reductions_agree": g.reductions_agree,
        "agreement": g.agreement,
        "lr_star": [
            {
                "batch_size": o.batch_size,
                "lr": o.lr,
                "interval": [o.lo, o.hi],
                "best_tried_lr": o.best_tried_lr,
                "val_loss_per_sample": o.best_loss,
                "lrs_tried": o.n_points,
                "seeds": o.seeds,
                "method": o.method,
                "on_edge": o.on_edge,
                "above_b_simple": bool(b_simple and o.batch_size > b_simple),
            }
            for o in g.optima
        ],
        "edge_warnings": warnings,
        "b_simple": b_simple,
        "batch_sizes_above_b_simple": [b.batch_size for b in g.per_batch if b_simple and b.batch_size > b_simple],
    }
    law = g.b_noise_law
    if law is not None:
        doc["noise"] = {
            "law": law.name,
            "law_chosen": law is g.chosen,
            "b_noise": law.params["b_noise"],
            "b_noise_interval": list(law.intervals["b_noise"]),
            "b_simple_measured": list(g.b_simple_range) if g.b_simple_range else None,
            "agree": g.b_noise_agrees,
        }
    return doc


def build_export(
    client: "MlflowClient",
    sweep: str,
    parent_run_id: Optional[str] = None,
    records: Optional[list[TrialRecord]] = None,
    groups: Optional[list[GroupSummary]] = None,
    parent: Optional["Run"] = None,
    tests: Optional[dict[str, dict]] = None,
    transfers: Optional[list[Transfer]] = None,
    criticals: Optional[dict[str, CriticalBatch]] = None,
) -> dict[str, Any]:
    parent = parent or find_parent_run(client, sweep, parent_run_id)
    records = load_records(client, parent) if records is None else records
    if not records:
        raise ExportError(f"sweep {sweep!r}: parent run {parent.info.run_id} has no trial runs")
    spec = sweep_spec(client, parent)
    groups = summarize(records, spec.space.lr_ranges() if spec else None) if groups is None else groups
    tests = tests or {}
    space = _space_values(spec, parent.data.params)
    if criticals is None:
        criticals = critical_batches(client, records, groups)
    if transfers is None:
        transfers = read_transfers(client, parent, groups, _tolerance(spec))
    by_group = {t.group: t for t in transfers}
    return {
        "samplewise_export": EXPORT_VERSION,
        "sweep": parent.data.tags.get(m.TAG_SWEEP, sweep),
        "parent_run_id": parent.info.run_id,
        "tracking_uri": client.tracking_uri,
        "workload": parent.data.params.get("workload.name") or parent.data.params.get("workload.train"),
        "objective": m.OBJECTIVE,
        "loss_unit": parent.data.tags.get(m.TAG_LOSS_UNIT, "sample"),
        "budget_samples": int(parent.data.tags.get(m.TAG_BUDGET_SAMPLES, 0)),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "constants": [
            doc
            for g in groups
            for doc in _group_docs(
                g,
                parent.data.params,
                tests.get(g.name),
                by_group.get(g.name),
                space,
                _n_train(spec, parent),
                criticals.get(g.name),
            )
        ],
    }


def critical_batches(
    client: "MlflowClient", records: list[TrialRecord], groups: list[GroupSummary]
) -> dict[str, CriticalBatch]:
    """Each group's critical batch size, from every trial's val-loss curve."""
    curves = loss_curves(client, records)
    out = {g.name: critical_batch(g, records, curves) for g in groups}
    heads = sorted({p.run_id for c in out.values() for f in c.frontiers for p in f.points})
    noise = metric_histories(client, heads, m.B_SIMPLE) if heads else {}
    return {name: with_b_simple(c, noise) for name, c in out.items()}


def _tolerance(spec) -> float:
    """The regret within which an answer transfers: the sweep's spec's, else the default."""
    from services.spec import TransferSpec

    return (spec.transfer if spec is not None else TransferSpec()).tolerance


def write_export(doc: dict[str, Any], out_dir: Path, client: "MlflowClient | None" = None) -> list[Path]:
    """Write ``<sweep>.json`` and ``.yaml`` to ``out_dir`` and log them on the parent run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{doc['sweep']}.json"
    yaml_path = out_dir / f"{doc['sweep']}.yaml"
    text = json.dumps(doc, indent=2) + "\n"
    json_path.write_text(text)
    # from the JSON, so no value is shared between constants: YAML would write anchors (&id001) for those
    yaml_path.write_text(yaml.safe_dump(json.loads(text), sort_keys=False))
    if client is not None:
        for path in (json_path, yaml_path):
            client.log_artifact(doc["parent_run_id"], str(path), artifact_path="export")
    return [json_path, yaml_path]


def export_sweep(
    sweep: str,
    tracking_uri: str,
    out_dir: Path,
    parent_run_id: Optional[str] = None,
    plots: bool = True,
    holdout: bool = True,
):
    """Export a sweep: the constants (JSON, YAML) and the plots, on disk and on the parent run.

    ``holdout``: evaluate each group's best configuration once on the test split
    (:mod:`services.results.holdout`), when the workload has one.
    """
    from services.results.holdout import test_best
    from services.results.plot_frontier import write_frontier
    from services.results.plots import write_plots

    client = client_for(tracking_uri)
    parent = find_parent_run(client, sweep, parent_run_id)
    records = load_records(client, parent)
    spec = sweep_spec(client, parent)
    groups = summarize(records, spec.space.lr_ranges() if spec else None) if records else []
    tests = {}
    if holdout and spec is not None:
        for g in groups:
            if g.best is not None and not g.best.stopped_early:
                result = test_best(client, spec, g.best)
                if result is not None:
                    tests[g.name] = result
    transfers = read_transfers(client, parent, groups, _tolerance(spec))
    criticals = critical_batches(client, records, groups)
    doc = build_export(
        client,
        sweep,
        records=records,
        groups=groups,
        parent=parent,
        tests=tests,
        transfers=transfers,
        criticals=criticals,
    )
    files = write_export(doc, out_dir, client)
    if plots:
        rows = {
            t.group: [{"batch_size": c.batch_size, "best_lr": c.best_lr, "regret": c.regret} for c in t.checks]
            for t in transfers
        }
        pngs = write_plots(
            doc["sweep"],
            records,
            groups,
            best_histories(client, groups, records),
            out_dir,
            doc["loss_unit"],
            transfers=rows,
        )
        frontier = write_frontier(doc["sweep"], list(criticals.values()), out_dir)
        pngs += [frontier] if frontier else []
        for png in pngs:
            client.log_artifact(parent.info.run_id, str(png), artifact_path="plots")
        files += pngs
    summary.publish(client, doc, [p.name for p in files if p.suffix == ".png"])
    return doc, files


def publish_answer(
    sweep: str,
    tracking_uri: str,
    parent_run_id: Optional[str],
    records: Optional[list[TrialRecord]] = None,
    groups: Optional[list[GroupSummary]] = None,
) -> Optional[dict[str, Any]]:
    """Put the answer on the sweep's parent run (description, metrics, tags; no files, no plots)
    when a sweep ends, from ``records`` and ``groups`` when the caller has them already; None
    when no trial left anything to answer from."""
    client = client_for(tracking_uri)
    try:
        doc = build_export(client, sweep, parent_run_id, records=records, groups=groups, tests={})
    except ExportError:
        return None
    summary.publish(client, doc)
    return doc
