"""Specs an operator's generator found that got past validation: each must exit 2 with one
short line naming the field, in bounded memory and time, from `validate` as from `sweep`."""

import contextlib
import io
import time
import tracemalloc

import pytest
import yaml

from services.cli import main as cli
from tests.conftest import spec_dict

VALID = yaml.safe_dump(spec_dict())


def _run(tmp_path, text, command="validate"):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    err = io.StringIO()
    tracemalloc.start()
    start = time.monotonic()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = cli.main(
                [command, str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
                if command == "sweep"
                else [command, str(path)]
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return status, err.getvalue(), time.monotonic() - start, peak


def _spec(**overrides):
    return yaml.safe_dump(spec_dict(**overrides))


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)

CASES = {
    # name: (spec text, words the one line must contain)
    "alias bomb": (BOMB, ["aliases"]),
    "alias bomb inside workload.params": (
        VALID.replace(
            "params:\n    hidden: 16",
            "params:\n    hidden: 16\n    junk: "
            + "&x0 [1,1,1,1,1,1,1,1,1,1]\n"
            + "".join(
                f"    junk{i}: &x{i} [*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1},"
                f"*x{i - 1},*x{i - 1},*x{i - 1},*x{i - 1}]\n"
                for i in range(1, 9)
            ),
        ),
        ["aliases"],
    ),
    "grid_points 1e8": (
        _spec(
            searcher={"kind": "grid"},
            space={**spec_dict()["space"], "lr_per_sample": {"low": 1e-4, "high": 1e-2, "grid_points": 100000000}},
        ),
        ["grid_points"],
    ),
    "epochs 1e308": (_spec(budget={"epochs": 1e308}), ["budget.epochs"]),
    "seed 2**64": (_spec(searcher={**spec_dict()["searcher"], "seed": 2**64}), ["searcher.seed"]),
    "seeds entry 2**64": (_spec(space={**spec_dict()["space"], "seeds": [1, 2**64]}), ["seeds.1"]),
    "wrong-typed workload param": (
        _spec(workload={"name": "digits_mlp", "params": {"hidden": "wide"}}),
        ["workload.params.hidden", "integer"],
    ),
    "wrong-typed plug-in param": (
        _spec(workload={"name": "tests.plugin_workloads:typed", "params": {"depth": [1, 2]}}),
        ["workload.params.depth"],
    ),
    "unknown workload param": (
        _spec(workload={"name": "digits_mlp", "params": {"widht": 3}}),
        ["workload.params.widht", "unexpected"],
    ),
    "workload that raises": (  # a plug-in without bounds of its own passes -3 on to digits_mlp
        _spec(workload={"name": "tests.plugin_workloads:typed", "params": {"hidden": -3}}),
        ["workload:", "fail on 2 training samples"],
    ),
    "more CPUs than the machine": (_spec(resources={"cpus_per_trial": 4096}), ["resources.cpus_per_trial"]),
    "hidden 0": (_spec(workload={"name": "digits_mlp", "params": {"hidden": 0}}), ["workload.params.hidden"]),
    "hidden 1e12": (_spec(workload={"name": "digits_mlp", "params": {"hidden": 10**12}}), ["workload.params.hidden"]),
    "depth -1": (_spec(workload={"name": "digits_mlp", "params": {"depth": -1}}), ["workload.params.depth"]),
    "data_seed -1": (
        _spec(workload={"name": "digits_mlp", "params": {"data_seed": -1}}),
        ["workload.params.data_seed"],
    ),
    "no training data": (
        _spec(workload={"name": "digits_mlp", "params": {"val_fraction": 1.0}}),
        ["workload.params.val_fraction"],
    ),
    "a YAML date as a param": (VALID.replace("hidden: 16", "hidden: 2024-01-01"), ["workload.params.hidden", "date"]),
    "a YAML binary as a param": (VALID.replace("hidden: 16", "hidden: !!binary aGVsbG8="), ["workload.params.hidden"]),
    "lr_per_sample high 1e308": (
        _spec(space={**spec_dict()["space"], "lr_per_sample": {"low": 1e-4, "high": 1e308}}),
        ["lr_per_sample", "high"],
    ),
    "transfer at a swept batch size": (_spec(transfer={"batch_sizes": [16, 24]}), ["transfer.batch_sizes", "16"]),
    "transfer tolerance 0": (_spec(transfer={"tolerance": 0}), ["transfer.tolerance"]),
    "transfer seeds repeated": (_spec(transfer={"seeds": [1, 1]}), ["seeds", "duplicate"]),
    "transfer octaves 9": (_spec(transfer={"octaves": 9}), ["transfer.octaves"]),
    "duplicate key": (VALID + "name: again\n", ["duplicate key 'name'"]),
    "a 500 kB value": (_spec(name="x" * 500_000), ["name"]),
    "a 2 MB file": ("# padding\n" * 200_000 + VALID, ["at most 1000000 bytes"]),
    "an arbitrary callable": (
        _spec(workload={"name": "os:system", "params": {"command": "touch pwned"}}),
        ["workload.name", "os:system", "-> Workload"],
    ),
    "a plug-in without the annotation": (
        _spec(workload={"name": "tests.plugin_workloads:unannotated"}),
        ["workload.name", "-> Workload"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_spec_exits_2_with_one_short_line(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, words = CASES[case]
    status, err, elapsed, peak = _run(tmp_path, text)
    lines = err.strip().splitlines()
    assert status == 2, err[:500]
    assert len(lines) == 1 and len(lines[0]) <= 400, err[:500]
    for word in words:
        assert word in lines[0], lines[0]
    assert elapsed < 20 and peak < 200e6, (elapsed, peak)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("case", ["an arbitrary callable", "wrong-typed workload param", "more CPUs than the machine"])
def test_sweep_rejects_what_validate_rejects_before_running_anything(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, err, _, _ = _run(tmp_path, CASES[case][0], command="sweep")
    assert status == 2, err[:500]
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "m.db").exists(), "a rejected spec must start nothing"


def test_a_spec_read_from_a_device_is_bounded(tmp_path, monkeypatch):
    """/dev/zero reports a size of 0 and never ends: the read stops at the limit."""
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    tracemalloc.start()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = cli.main(["validate", "/dev/zero"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 2 and "at most 1000000 bytes" in err.getvalue() and len(err.getvalue().splitlines()) == 1
    assert peak < 50e6


@pytest.mark.parametrize(
    "body,words",
    [
        ("print('hello from import')\nimport sys\nprint('and to stderr', file=sys.stderr)\n", ["has no function"]),
        ("print('hello from import')\nraise RuntimeError('boom at import')\n", ["raised RuntimeError: boom at import"]),
        ("print('hello from import')\nimport no_such_module_anywhere\n", ["cannot import"]),
    ],
)
def test_a_module_that_prints_on_import_still_ends_in_one_line(body, words, tmp_path, monkeypatch):
    """A workload module's own prints do not join the error: stdout and stderr together hold one line."""
    monkeypatch.chdir(tmp_path)
    name = f"noisy_{abs(hash(body)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(body)
    path = tmp_path / "bad.yaml"
    path.write_text(_spec(workload={"name": f"{name}:make"}))
    both = io.StringIO()
    with contextlib.redirect_stderr(both), contextlib.redirect_stdout(both):
        status = cli.main(["validate", str(path)])
    lines = both.getvalue().strip().splitlines()
    assert status == 2 and len(lines) == 1, both.getvalue()
    assert "workload.name" in lines[0] and all(w in lines[0] for w in words), lines[0]
