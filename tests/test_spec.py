"""Sweep spec validation: every shipped spec loads; bad ones name the field and value."""

import pydantic
import pytest
import yaml

from services.spec import SpecError, load_spec, parse_spec
from tests.conftest import SWEEPS, spec_dict


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_are_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.num_trials >= 1


def test_spec_is_frozen():
    spec = parse_spec(spec_dict())
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        spec.name = "other"
    assert spec.name == "t"


def test_defaults_fill_in_rules_and_grace():
    spec = parse_spec(spec_dict())
    assert spec.space.rule_for("sgd") == "linear" and spec.space.rule_for("adam") == "sqrt"
    assert spec.asha.enabled and spec.budget.interval_samples(1000) == 1000
    assert spec.budget.total_samples(1437) == 1437


def _space(**kw):
    base = spec_dict()["space"]
    return {**base, **kw}


@pytest.mark.parametrize(
    "data,field,value",
    [
        (spec_dict(space=_space(batch_sizes=[16, -4])), "space.batch_sizes.1", "-4"),
        (spec_dict(space=_space(batch_sizes=[])), "space.batch_sizes", "[]"),
        (spec_dict(space=_space(optimizers=["sgd", "lion"])), "space.optimizers.1", "lion"),
        (spec_dict(space=_space(reductions=["median"])), "space.reductions.0", "median"),
        (spec_dict(space=_space(lr_per_sample={"low": 1e-2, "high": 1e-4})), "space.lr_per_sample", "above high"),
        (spec_dict(space=_space(lr_per_sample={"low": 0, "high": 1e-4})), "space.lr_per_sample.low", "0"),
        (spec_dict(space=_space(rules={"sgd": "quadratic"})), "space.rules.sgd", "quadratic"),
        (spec_dict(space=_space(momentum=1.5)), "space.momentum", "1.5"),
        (spec_dict(searcher={"kind": "bayes", "num_trials": 2}), "searcher.kind", "bayes"),
        (spec_dict(searcher={"kind": "tpe"}), "searcher.num_trials", "required"),
        (spec_dict(searcher={"kind": "random", "num_trials": 0}), "searcher.num_trials", "0"),
        (spec_dict(budget={"epochs": 1, "samples": 100}), "budget", "exactly one"),
        (spec_dict(budget={"epochs": "many"}), "budget.epochs", "many"),
        (spec_dict(resources={"gpus_per_trial": 2}), "resources.gpus_per_trial", "2"),
        (spec_dict(name="has space"), "name", "has space"),
        (spec_dict(surprise=1), "surprise", "Extra inputs"),
        ({**spec_dict(), "space": None}, "space", "None"),
    ],
)
def test_bad_spec_names_field_and_value(data, field, value):
    with pytest.raises(SpecError) as info:
        parse_spec(data, "x.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"x.yaml: {field}")
    assert value in message


def test_grid_trials_beyond_the_grid_are_refused():
    data = spec_dict(searcher={"kind": "grid", "num_trials": 100})
    with pytest.raises(SpecError, match=r"searcher.num_trials: 100 exceeds the grid's 40 points"):
        parse_spec(data)


def test_load_spec_reports_yaml_and_file_problems(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(listy)
