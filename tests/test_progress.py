"""The progress printer's line per configuration: a pack's members each get theirs, as they
leave the pack (stopped by ASHA, diverged) or when it ends."""

import io
from types import SimpleNamespace

from services import metrics as m
from services.orchestration.progress import ProgressPrinter

BUDGET = 4000


def config(c: float) -> dict:
    return {
        "batch_size": 32,
        "reduction": "mean",
        "optimizer": "sgd",
        "rule": "linear",
        "lr_per_sample": c,
        "lr": 32 * c,
        "k": 1.0,
        "weight_decay": 0.0,
        "decoupled_decay": False,
        "momentum": 0.0,
        "eps": 1e-8,
        "seed": 0,
    }


def test_each_member_gets_one_line_when_it_leaves_its_pack_or_the_pack_ends():
    stream = io.StringIO()
    printer = ProgressPrinter(3, BUDGET, stream)
    trial = SimpleNamespace(trial_id="t1", config={m.PACK: [config(1e-3), config(1e-2), config(1.0)]}, status="RUNNING")
    point = {m.SAMPLES_SEEN: 1216, m.VAL_LOSS: 1.5}
    printer.on_trial_result(0, [trial], trial, {m.MEMBERS: {"0": {**point, m.STOPPED: 1.0}, "1": point}})
    printer.on_trial_result(0, [trial], trial, {m.MEMBERS: {"2": {**point, m.DIVERGED: 1.0}}})
    # a pack replayed on resume reports what MLflow holds: samples as floats
    printer.on_trial_result(0, [trial], trial, {m.MEMBERS: {"1": {m.SAMPLES_SEEN: 4000.0, m.VAL_LOSS: 0.5}}})
    trial.status = "TERMINATED"
    printer.on_trial_complete(0, [trial], trial)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[  1/3]") and "c=1.00e-03" in lines[0] and "stopped by ASHA at 1216 samples" in lines[0]
    assert lines[1].startswith("[  2/3]") and "c=1.00e+00" in lines[1] and lines[1].endswith("diverged")
    assert lines[2].startswith("[  3/3]") and "c=1.00e-02" in lines[2] and lines[2].endswith("done (4000 samples)")
