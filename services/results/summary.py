"""The sweep's answer where users browse it: on the MLflow parent run, a description (the per
answer table: optimizer, reduction, formula, leave-one-out regret, transfer verdict, rule
verdict), key figures as metrics (``answer/<group>/...``) and tags (``samplewise.answer.<group>``).

Built from the export document (:func:`services.results.export.build_export`), so the UI, the
files in ``exports/`` and ``samplewise lr`` say the same. ``samplewise sweep`` publishes it when
the sweep (and its transfer check) ends; ``samplewise export`` again, with the plots' names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Optional

from services import metrics as m

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

TAG_DESCRIPTION = "mlflow.note.content"
"""MLflow's own tag for a run's description: the run page renders it as markdown."""

HEADER = (
    "| optimizer | reduction | schedule | learning rate at batch size B | swept B "
    "| leave-one-out regret | transfer check | scaling rule |"
)


def group_label(const: dict[str, Any]) -> str:
    """``sgd_mean`` (``sgd_mean_lr_decay`` for a scheduled group): one name for metrics and tags."""
    parts = [const["optimizer"], const["reduction"]]
    if const.get("schedule", "constant") != "constant":
        parts.append(const["schedule"])
    return "_".join(parts)


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.1%}"


def _cell(text: Optional[str]) -> str:
    """A markdown table cell: pipes escaped, only the verdict's first clause (the rest is in the export)."""
    if not text:
        return "-"
    return text.split("; ")[0].replace("|", "\\|")


def description(doc: dict[str, Any], plots: Iterable[str] = ()) -> str:
    """The parent run's markdown description."""
    unit = doc.get("loss_unit", "sample")
    lines = [
        f"**samplewise sweep `{doc['sweep']}`**: the learning rate to use at any batch size B, per optimizer "
        f"and loss reduction, fitted to the lowest validation loss per {unit} at equal samples seen.",
        "",
        HEADER,
        "|" + "---|" * HEADER.count(" | ") + "---|",
    ]
    for c in doc["constants"]:
        answer = c.get("answer") or {}
        span = answer.get("batch_range") or [min(c["batch_sizes_swept"]), max(c["batch_sizes_swept"])]
        transfer = c.get("transfer")
        lines.append(
            f"| {c['optimizer']} | {c['reduction']} | {c.get('schedule', 'constant')} "
            f"| {'`' + c['formula'] + '`' if c.get('formula') else 'no usable trial'} | {span[0]}..{span[1]} "
            f"| {_pct(answer.get('loo_regret'))} "
            f"| {_cell(transfer['verdict']) if transfer else 'not checked yet (make transfer)'} "
            f"| {_cell(c.get('verdict'))} |"
        )
    lines += [
        "",
        "Regret: how much higher the validation loss is at the answered LR than at the best LR tried there "
        "(leave-one-out: each swept batch size predicted from the others; transfer: batch sizes the sweep "
        "did not train).",
    ]
    plots = list(plots)
    if plots:
        lines.append("Plots (Artifacts): " + ", ".join(f"`plots/{p}`" for p in plots) + ".")
    lines.append(
        "The constants with their evidence: `make export` (artifacts `export/`); in code, "
        f"`samplewise.load_export('exports/{doc['sweep']}.json').lr(batch_size=..., optimizer=..., reduction=...)`."
    )
    return "\n".join(lines)


def key_metrics(doc: dict[str, Any]) -> dict[str, float]:
    """Per answer: its LR per sample, leave-one-out regret, largest transfer regret."""
    out: dict[str, float] = {}
    for c in doc["constants"]:
        label = group_label(c)
        answer = c.get("answer") or {}
        transfer = c.get("transfer") or {}
        regrets = [ch["regret"] for ch in transfer.get("checks", []) if ch.get("regret") is not None]
        values = {
            m.ANSWER_LR_PER_SAMPLE: c.get("lr_per_sample"),
            m.ANSWER_LOO_REGRET: answer.get("loo_regret"),
            m.ANSWER_TRANSFER_REGRET: max(regrets) if regrets else None,
        }
        out.update({m.answer_metric(label, k): float(v) for k, v in values.items() if v is not None})
    return out


def key_tags(doc: dict[str, Any]) -> dict[str, str]:
    """Per answer: its formula and its transfer verdict, searchable in the runs table."""
    out: dict[str, str] = {}
    for c in doc["constants"]:
        label = group_label(c)
        out[f"{m.TAG_ANSWER}.{label}"] = c.get("formula") or "no usable trial"
        transfer = c.get("transfer")
        out[f"{m.TAG_TRANSFER_VERDICT}.{label}"] = transfer["verdict"] if transfer else "not checked"
    return out


def publish(client: "MlflowClient", doc: dict[str, Any], plots: Iterable[str] = ()) -> None:
    """Write the description, metrics and tags on the sweep's parent run (replacing earlier ones)."""
    import time

    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    tags = {TAG_DESCRIPTION: description(doc, plots), **key_tags(doc)}
    client.log_batch(
        doc["parent_run_id"],
        metrics=[Metric(k, v, now, 0) for k, v in key_metrics(doc).items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
