"""Reads a sweep back from MLflow and exports its tuned LR-per-sample constants.

``exports/<sweep>.json`` and ``.yaml`` hold, per optimizer x reduction, the constant c,
the exponent k and the formula ``lr = c * batch_size**k`` for that reduction, with the
evidence: best LR and val loss per batch size, trial counts, sweep and parent run id.
Both files are also logged as artifacts of the sweep's parent run.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import yaml

from search_spaces.scaling import ADAPTIVE, lr_for
from services import metrics as m
from services.analysis import GroupSummary, TrialRecord, summarize
from services.fit import CI
from services.errors import ExportError, TrackingError
from services.tracking import PARENT_TAG, client_for

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

EXPORT_VERSION = 1


def find_parent_run(client: "MlflowClient", sweep: str, parent_run_id: Optional[str] = None) -> "Run":
    """The given parent run, or the newest submission of sweep ``sweep``."""
    if parent_run_id:
        return client.get_run(parent_run_id)
    try:
        experiment = client.get_experiment_by_name(sweep)
    except Exception as err:
        raise TrackingError(f"MLflow tracking store {client.tracking_uri} is not usable: {err}") from None
    if experiment is None:
        raise ExportError(f"sweep {sweep!r}: no such experiment in {client.tracking_uri}; run the sweep first")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{m.TAG_ROLE}` = 'parent'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ExportError(f"sweep {sweep!r}: no submissions in {client.tracking_uri}")
    return runs[0]


def _record(run: "Run") -> TrialRecord:
    p, mt, tags = run.data.params, run.data.metrics, run.data.tags
    return TrialRecord(
        run_id=run.info.run_id,
        trial_id=tags.get(m.TAG_TRIAL_ID, ""),
        status=run.info.status,
        optimizer=p.get("optimizer", "?"),
        reduction=p.get("reduction", "?"),
        rule=p.get("rule", "?"),
        k=float(p.get("k", "nan")),
        batch_size=int(p.get("batch_size", 0)),
        lr=float(p.get("lr", "nan")),
        lr_per_sample=float(p.get("lr_per_sample", "nan")),
        val_loss=mt.get(m.VAL_LOSS),
        val_accuracy=mt.get(m.VAL_ACCURACY),
        samples_seen=int(mt.get(m.SAMPLES_SEEN, 0)),
        diverged=tags.get(m.TAG_DIVERGED) == "true" or bool(mt.get(m.DIVERGED)),
        stopped_early=tags.get(m.TAG_STOPPED_EARLY) == "true",
        b_simple=mt.get(m.B_SIMPLE),
        error=tags.get(m.TAG_ERROR),
        schedule=p.get("schedule", "constant"),
        seed=int(p.get("seed", 0)),
        updates=int(mt.get(m.UPDATES, 0)),
        wall_s=(run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
    )


SEARCH_PAGE = 50_000
"""Runs per search_runs call: MLflow's largest page. One page of 10,000 runs reads about 12%
faster than ten pages of 1,000 (each page re-runs the query with an offset)."""


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cyclic garbage collector for a bulk read. MLflow's SQL store builds about
    23 SQLAlchemy objects per run; with the collector on, its passes re-scan every live one
    over and over, which took more than half of reading 10,000 runs (8 s against 3 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_records(client: "MlflowClient", parent: "Run") -> list[TrialRecord]:
    """Every trial (child run) of a sweep submission."""
    records, token = [], None
    with _gc_paused():
        while True:
            page = client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                max_results=SEARCH_PAGE,
                page_token=token,
            )
            records += [_record(run) for run in page]
            token = page.token
            if not token:
                return records


def _group_doc(g: GroupSummary, spec_params: dict[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "optimizer": g.optimizer,
        "reduction": g.reduction,
        "schedule": g.schedule,
        "rule": g.rule,
        "k": g.k,
        "lr_per_sample": g.lr_per_sample,
        "formula": f"lr = {g.lr_per_sample:.6g} * batch_size**{g.k:g}" if g.best else None,
        "batch_sizes_swept": [b.batch_size for b in g.per_batch],
        "per_batch_size": [asdict(b) for b in g.per_batch],
        "trials": g.counts,
    }
    tied_sum = g.reduction == "sum" and g.rule != "none"
    eps = float(spec_params.get("space.eps", "1e-8"))
    if g.optimizer in ADAPTIVE:
        doc["eps"] = f"eps = {eps:g} * batch_size" if tied_sum else f"eps = {eps:g}"
    wd = float(spec_params.get("space.weight_decay.value", "0"))
    if wd:
        coupled = spec_params.get("space.weight_decay.mode") == "coupled" and g.optimizer != "adamw"
        doc["weight_decay"] = f"weight_decay = {wd:g} * batch_size" if tied_sum and coupled else f"weight_decay = {wd:g}"
    if g.best:
        b = g.best
        doc["best"] = {
            "batch_size": b.batch_size, "lr": b.lr, "val_loss_per_sample": b.val_loss,
            "val_accuracy": b.val_accuracy, "samples_seen": b.samples_seen, "run_id": b.run_id,
            "b_simple": b.b_simple,
        }
    doc.update(_evidence_doc(g))
    return doc


def _evidence_doc(g: GroupSummary) -> dict[str, Any]:
    """Does the rule hold: fitted exponent, verdict, valid range, lr*(B) with intervals, B_simple."""
    b_simple = g.b_simple
    doc: dict[str, Any] = {
        "verdict": g.verdict,
        "lr_star": [
            {
                "batch_size": o.batch_size, "lr": o.lr, "interval": [o.lo, o.hi], "best_tried_lr": o.best_tried_lr,
                "val_loss_per_sample": o.best_loss, "lrs_tried": o.n_points, "method": o.method,
                "on_edge": o.on_edge, "above_b_simple": bool(b_simple and o.batch_size > b_simple),
            }
            for o in g.optima
        ],
        "edge_warnings": [
            f"batch size {o.batch_size}: the best LR tried is at the edge of the range searched; widen it"
            for o in g.optima if o.on_edge
        ],
        "b_simple": b_simple,
        "batch_sizes_above_b_simple": [b.batch_size for b in g.per_batch if b_simple and b.batch_size > b_simple],
    }
    if g.law is not None:
        law = g.law
        doc["fit"] = {
            "k": law.k, "k_interval": [law.k_lo, law.k_hi], "c": law.c, "c_interval": [law.c_lo, law.c_hi],
            "formula": f"lr* = {law.c:.4g} * batch_size**{law.k:.3g}", "rule_k": g.k, "confidence": CI,
            "valid_batch_range": list(g.valid_batch_range), "above_valid_range": g.above_range,
        }
    return doc


def build_export(client: "MlflowClient", sweep: str, parent_run_id: Optional[str] = None,
                 records: Optional[list[TrialRecord]] = None, groups: Optional[list[GroupSummary]] = None,
                 parent: Optional["Run"] = None) -> dict[str, Any]:
    parent = parent or find_parent_run(client, sweep, parent_run_id)
    records = load_records(client, parent) if records is None else records
    if not records:
        raise ExportError(f"sweep {sweep!r}: parent run {parent.info.run_id} has no trial runs")
    groups = summarize(records) if groups is None else groups
    return {
        "samplewise_export": EXPORT_VERSION,
        "sweep": parent.data.tags.get(m.TAG_SWEEP, sweep),
        "parent_run_id": parent.info.run_id,
        "tracking_uri": client.tracking_uri,
        "workload": parent.data.params.get("workload.name"),
        "objective": m.OBJECTIVE,
        "budget_samples": int(parent.data.tags.get(m.TAG_BUDGET_SAMPLES, 0)),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "constants": [_group_doc(g, parent.data.params) for g in groups],
    }


def write_export(doc: dict[str, Any], out_dir: Path, client: "MlflowClient | None" = None) -> list[Path]:
    """Write ``<sweep>.json`` and ``.yaml`` to ``out_dir`` and log them on the parent run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{doc['sweep']}.json"
    yaml_path = out_dir / f"{doc['sweep']}.yaml"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    yaml_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if client is not None:
        for path in (json_path, yaml_path):
            client.log_artifact(doc["parent_run_id"], str(path), artifact_path="export")
    return [json_path, yaml_path]


def best_histories(client: "MlflowClient", groups: list[GroupSummary], records: list[TrialRecord]):
    """Val-loss curves (samples seen, loss) of the best trial per optimizer x reduction x batch size."""
    run_of = {(r.optimizer, r.reduction, r.schedule, r.batch_size, r.lr, r.val_loss): r.run_id for r in records}
    curves = {}
    for g in groups:
        for b in g.per_batch:
            run_id = run_of.get((g.optimizer, g.reduction, g.schedule, b.batch_size, b.lr, b.val_loss))
            if run_id:
                history = client.get_metric_history(run_id, m.VAL_LOSS)
                curves[(g.optimizer, g.reduction, g.schedule, b.batch_size)] = sorted((p.step, p.value) for p in history)
    return curves


def export_sweep(sweep: str, tracking_uri: str, out_dir: Path, parent_run_id: Optional[str] = None,
                 plots: bool = True):
    """Export a sweep: the constants (JSON, YAML) and the four plots, on disk and on the parent run."""
    from services.plots import write_plots

    client = client_for(tracking_uri)
    parent = find_parent_run(client, sweep, parent_run_id)
    records = load_records(client, parent)
    groups = summarize(records) if records else []
    doc = build_export(client, sweep, records=records, groups=groups, parent=parent)
    files = write_export(doc, out_dir, client)
    if plots:
        pngs = write_plots(doc["sweep"], records, groups, best_histories(client, groups, records), out_dir)
        for png in pngs:
            client.log_artifact(parent.info.run_id, str(png), artifact_path="plots")
        files += pngs
    return doc, files


def read_export(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ExportError(f"{path}: cannot read export ({err.strerror or err})") from None
    try:  # JSON by its own parser: PyYAML reads JSON's 2e-05 as a string
        doc = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError):
        raise ExportError(f"{path}: not a samplewise export (unparseable)") from None
    if not isinstance(doc, dict) or "constants" not in doc:
        raise ExportError(f"{path}: not a samplewise export (no constants)")
    return doc


def pick_constant(doc: dict[str, Any], optimizer: Optional[str], reduction: Optional[str],
                  schedule: Optional[str] = None) -> dict[str, Any]:
    usable = [c for c in doc["constants"] if c.get("lr_per_sample") is not None]
    if schedule is None and any(c.get("schedule", "constant") != "constant" for c in usable):
        schedule = "constant" if any(c.get("schedule", "constant") == "constant" for c in usable) else None
    matches = [
        c for c in usable
        if (optimizer is None or c["optimizer"] == optimizer) and (reduction is None or c["reduction"] == reduction)
        and (schedule is None or c.get("schedule", "constant") == schedule)
    ]
    choices = ", ".join(
        f"{c['optimizer']}/{c['reduction']}" + (f"/{c['schedule']}" if c.get("schedule", "constant") != "constant" else "")
        for c in usable) or "none"
    if not matches:
        raise ExportError(
            f"--optimizer/--reduction: no constant for {optimizer or '*'}/{reduction or '*'}; export has {choices}"
        )
    if len(matches) > 1:
        raise ExportError(f"--optimizer/--reduction: ambiguous, export has {choices}; pick one")
    return matches[0]


def lr_lookup(doc: dict[str, Any], batch_size: int, optimizer: Optional[str] = None,
              reduction: Optional[str] = None, schedule: Optional[str] = None) -> tuple[float, dict[str, Any], list[str]]:
    """(lr, the constant used, warnings) for ``batch_size`` (the starting LR of a schedule)."""
    if batch_size < 1:
        raise ExportError(f"--batch-size: must be >= 1, got {batch_size}")
    const = pick_constant(doc, optimizer, reduction, schedule)
    lr = lr_for(const["lr_per_sample"], const["k"], batch_size)
    warnings = []
    swept = const.get("batch_sizes_swept") or []
    fit = const.get("fit") or {}
    valid = fit.get("valid_batch_range")
    if swept and not (min(swept) <= batch_size <= max(swept)):
        warnings.append(
            f"batch size {batch_size} lies outside the swept range {min(swept)}..{max(swept)}; "
            "the rule was not checked there"
        )
    elif valid and not (valid[0] <= batch_size <= valid[1]):
        warnings.append(
            f"batch size {batch_size} lies outside {valid[0]}..{valid[1]}, where the sweep found the rule to hold"
        )
    if str(const.get("verdict", "")).startswith("does not hold") and fit:
        fitted = fit["c"] * batch_size ** fit["k"]
        warnings.append(f"the rule does not hold here ({const['verdict']}); the fitted {fit['formula']} gives {fitted:.4g}")
    if not math.isfinite(lr):
        raise ExportError(f"{const['optimizer']}/{const['reduction']}: constant is not a finite number")
    return lr, const, warnings
