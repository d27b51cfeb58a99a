"""The answer on the MLflow parent run: its description table, metrics and tags, built from an
export document."""

import pytest

from services import metrics as m
from services.results import summary

DOC = {
    "sweep": "s",
    "parent_run_id": "p",
    "loss_unit": "sample",
    "constants": [
        {
            "optimizer": "sgd",
            "reduction": "mean",
            "schedule": "constant",
            "lr_per_sample": 0.004,
            "formula": "lr = 1.3 / (1 + 21 / batch_size)",
            "batch_sizes_swept": [16, 256],
            "answer": {"batch_range": [16, 256], "loo_regret": 0.012},
            "transfer": {
                "verdict": "transfers within 5% (largest regret 0.7% at B = 512)",
                "checks": [{"regret": 0.0}, {"regret": 0.007}, {"regret": None}],
            },
            "verdict": "does not hold: k = 0.27 [0.07, 0.34] excludes the rule's 1; 3 of 5 batch sizes lie above",
        },
        {
            "optimizer": "adam",
            "reduction": "sum",
            "schedule": "lr_decay",
            "lr_per_sample": None,
            "formula": None,
            "batch_sizes_swept": [16, 64],
            "answer": None,
            "transfer": None,
            "verdict": "no | usable trial",
        },
    ],
}


def test_description_is_one_table_row_per_answer_with_formula_and_verdicts():
    text = summary.description(DOC, ["s-lr_star.png"])
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == summary.HEADER and len(rows) == 3
    sgd, adam = rows[1], rows[2]
    assert sgd.count(" | ") == summary.HEADER.count(" | ")
    assert "`lr = 1.3 / (1 + 21 / batch_size)`" in sgd and "| 16..256 |" in sgd and "| 1.2% |" in sgd
    assert "transfers within 5% (largest regret 0.7% at B = 512)" in sgd
    assert "excludes the rule's 1 |" in sgd  # the verdict's first clause only
    assert "no usable trial" in adam and "not checked yet (make transfer)" in adam
    assert "no \\| usable trial" in adam  # a pipe in a cell is escaped, the row keeps its columns
    assert "`plots/s-lr_star.png`" in text


def test_metrics_and_tags_name_each_answer_by_its_group():
    metrics = summary.key_metrics(DOC)
    assert metrics == {
        m.answer_metric("sgd_mean", m.ANSWER_LR_PER_SAMPLE): 0.004,
        m.answer_metric("sgd_mean", m.ANSWER_LOO_REGRET): 0.012,
        m.answer_metric("sgd_mean", m.ANSWER_TRANSFER_REGRET): pytest.approx(0.007),
    }
    tags = summary.key_tags(DOC)
    assert tags[f"{m.TAG_ANSWER}.sgd_mean"] == "lr = 1.3 / (1 + 21 / batch_size)"
    assert tags[f"{m.TAG_ANSWER}.adam_sum_lr_decay"] == "no usable trial"
    assert tags[f"{m.TAG_TRANSFER_VERDICT}.adam_sum_lr_decay"] == "not checked"
