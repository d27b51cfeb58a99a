"""The samplewise command line: exit codes and one-line errors, in a real subprocess."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, spec_dict


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(cwd)},
    )


@pytest.mark.parametrize(
    "data,field",
    [
        (spec_dict(space={"batch_sizes": [0]}), "space"),
        (spec_dict(workload={"name": "no_such_workload"}), "workload.name"),
        (spec_dict(workload={"name": "digits_mlp", "params": {"width": 3}}), "workload.params"),
        (spec_dict(workload={"name": "nowhere.module:fn"}), "workload.name"),
        (spec_dict(searcher={"kind": "random", "num_trials": -1}), "searcher.num_trials"),
        (spec_dict(workload={"name": "tests.plugin_workloads:mean_loss"}), "workload.loss_fn"),
    ],
)
def test_bad_spec_exits_2_with_one_line_and_writes_nothing(tmp_path, data, field):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump(data))
    before = set(tmp_path.iterdir())
    result = run_cli("sweep", spec, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in result.stderr
    assert set(tmp_path.iterdir()) == before  # no MLflow store, no Ray results


def test_validate_accepts_the_quickstart(tmp_path):
    result = run_cli("validate", ROOT / "sweeps" / "quickstart.yaml", cwd=tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout


def test_every_subcommand_has_help(capsys):
    import argparse

    from services.cli import main as cli

    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(subcommands) >= 14
    for sub in subcommands:
        with pytest.raises(SystemExit) as exit_:
            cli.main([sub, "--help"])
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith(f"usage: samplewise {sub}") and len(out) > 80, sub


def test_unknown_flag_is_a_usage_error(tmp_path):
    result = run_cli("lr", "x.json", "--batch-size", "ten", cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def _export(tmp_path):
    doc = {
        "sweep": "s",
        "parent_run_id": "p",
        "constants": [
            {
                "optimizer": "sgd",
                "reduction": "mean",
                "rule": "linear",
                "k": 1.0,
                "lr_per_sample": 1e-3,
                "formula": "lr = 0.001 * batch_size**1",
                "batch_sizes_swept": [16, 256],
            },
            {
                "optimizer": "adam",
                "reduction": "mean",
                "rule": "sqrt",
                "k": 0.5,
                "lr_per_sample": 1e-4,
                "formula": "lr = 0.0001 * batch_size**0.5",
                "batch_sizes_swept": [16, 256],
                "eps": "eps = 1e-08",
            },
        ],
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    return path


def test_lr_prints_the_rule_and_warns_outside_the_swept_range(tmp_path):
    path = _export(tmp_path)
    inside = run_cli("lr", path, "--batch-size", 128, "--optimizer", "sgd", "--value-only", cwd=tmp_path)
    assert inside.returncode == 0 and float(inside.stdout) == pytest.approx(0.128) and inside.stderr == ""
    outside = run_cli("lr", path, "--batch-size", 1024, "--optimizer", "adam", cwd=tmp_path)
    assert outside.returncode == 0 and "lr = 0.0032" in outside.stdout
    assert "outside the swept range 16..256" in outside.stderr


def test_lr_ambiguous_or_missing_group_exits_2(tmp_path):
    path = _export(tmp_path)
    ambiguous = run_cli("lr", path, "--batch-size", 64, cwd=tmp_path)
    assert ambiguous.returncode == 2 and "ambiguous" in ambiguous.stderr
    missing = run_cli("lr", path, "--batch-size", 64, "--optimizer", "adamw", cwd=tmp_path)
    assert missing.returncode == 2 and "no constant for adamw" in missing.stderr
    nofile = run_cli("lr", tmp_path / "none.json", "--batch-size", 64, cwd=tmp_path)
    assert nofile.returncode == 2 and "cannot read export" in nofile.stderr


def test_lr_answers_from_the_chosen_law_and_says_which(tmp_path):
    doc = json.loads(_export(tmp_path).read_text())
    sgd = doc["constants"][0]
    sgd["verdict"] = "inconclusive: k = 0.50 [0.10, 0.90] ..."
    sgd["answer"] = {
        "name": "saturating",
        "source": "saturating",
        "params": {"lr_max": 2.0, "b_noise": 64.0},
        "shift": 0.0,
        "batch_range": [8, 512],
        "intervals": {},
    }
    adam = doc["constants"][1]
    adam["verdict"] = "inconclusive: k = 0.40 [-0.10, 0.90] ..."
    adam["answer"] = {
        "name": "power",
        "source": "rule",
        "params": {"c": 1e-4, "k": 0.5},
        "shift": 0.0,
        "batch_range": [16, 128],
        "intervals": {},
    }
    path = tmp_path / "fitted.json"
    path.write_text(json.dumps(doc))
    sat = run_cli("lr", path, "--batch-size", 64, "--optimizer", "sgd", cwd=tmp_path)
    assert sat.returncode == 0 and "lr = 1 for batch_size 64" in sat.stdout  # 2 / (1 + 64/64)
    assert "saturating, fitted over B in 8..512" in sat.stdout and sat.stderr == ""
    past = run_cli("lr", path, "--batch-size", 256, "--optimizer", "adam", cwd=tmp_path)
    assert "batch size 256 lies 1 octave above the swept 16..128" in past.stderr
    assert "extrapolates the rule formula, unchecked" in past.stderr
    assert "no transfer check for this answer yet" in past.stdout
    adam["transfer"] = {
        "verdict": "transfers within 5% (largest regret 1.0% at B = 256)",
        "batch_range": [8, 256],
        "checks": [
            {"batch_size": b, "regret": r, "regret_interval": [0.0, r], "verdict": "within"}
            for b, r in ((8, 0.0), (256, 0.01))
        ],
    }
    path.write_text(json.dumps(doc))
    checked = run_cli("lr", path, "--batch-size", 200, "--optimizer", "adam", cwd=tmp_path)
    assert checked.stderr == ""  # outside the swept range, inside the one a passed check covered
    assert "transfer check at B = 256 (nearest): regret 1.0% [0.0%, 1.0%]" in checked.stdout
    beyond = run_cli("lr", path, "--batch-size", 1024, "--optimizer", "adam", cwd=tmp_path)
    assert "beyond the 8..256 the transfer check covered" in beyond.stderr
    assert float(
        run_cli("lr", path, "--batch-size", 64, "--optimizer", "adam", "--value-only", cwd=tmp_path).stdout
    ) == pytest.approx(8e-4)
