"""Adam's betas, eps and AdamW's decay tied to the batch size: the pure rules, the space that
applies them (optuna.trial.FixedTrial), and the spec that selects them."""

import math

import optuna
import pytest

from search_spaces import adam, suggest
from search_spaces.scaling import derive
from services.errors import SpecError
from services.spec import parse_spec
from tests.conftest import spec_dict


def test_halflife_in_samples_is_fixed_by_the_halflife_rule():
    b2 = 0.99
    t = adam.halflife_samples(b2, 32)
    assert t == pytest.approx(32 * math.log(0.5) / math.log(0.99))
    for B in (1, 4, 32, 256, 4096):
        beta = adam.adam_settings("sqrt_halflife", B, 32, (0.9, b2), 1e-8)[1]
        assert adam.halflife_samples(beta, B) == pytest.approx(t, rel=1e-12)
        assert adam.beta_for_halflife(t, B) == pytest.approx(beta, rel=1e-12)
    # small batches need beta2 closer to 1, large ones further from it
    assert adam.adam_settings("sqrt_halflife", 4, 32, (0.9, b2), 1e-8)[1] > 0.998
    assert adam.adam_settings("sqrt_halflife", 256, 32, (0.9, b2), 1e-8)[1] < 0.93


def test_sde_rule_scales_one_minus_beta_and_eps():
    b1, b2, eps = adam.adam_settings("sde", 128, 32, (0.9, 0.999), 1e-6)
    assert 1 - b1 == pytest.approx(4 * 0.1) and 1 - b2 == pytest.approx(4 * 0.001)
    assert eps == pytest.approx(1e-6 / 2)
    assert adam.adam_settings("sde", 32, 32, (0.9, 0.999), 1e-6) == (0.9, 0.999, 1e-6)
    # past k = 1 / (1 - beta) the rule's beta would be negative: held at 0
    assert adam.adam_settings("sde", 32 * 20, 32, (0.9, 0.999), 1e-6)[0] == 0.0
    # the plain sqrt rule moves none of them
    assert adam.adam_settings("sqrt", 512, 32, (0.9, 0.999), 1e-6) == (0.9, 0.999, 1e-6)


@pytest.mark.parametrize("rule,k", [("sqrt", 0.5), ("linear", 1.0), ("sde", 0.5)])
def test_timescale_tie_keeps_adamw_timescale_in_epochs(rule, k):
    n_train = 5000
    taus = []
    for B in (4, 32, 256):
        hp = derive(
            batch_size=B,
            reduction="mean",
            optimizer="adamw",
            lr_per_sample=1e-3,
            rule=rule,
            weight_decay=0.1,
            decay_tie="timescale",
            reference_batch_size=32,
        )
        assert hp.lr == pytest.approx(1e-3 * B**k)
        taus.append(adam.decay_timescale_epochs(B, hp.lr, hp.weight_decay, n_train))
    assert taus == pytest.approx([taus[0]] * 3, rel=1e-12)
    assert adam.decay_for_timescale(256, 1e-3 * 256**k, taus[0], n_train) == pytest.approx(0.1 * 8 ** (1 - k))
    # a fixed decay's timescale grows with B under the sqrt rule
    fixed = [
        derive(batch_size=B, reduction="mean", optimizer="adamw", lr_per_sample=1e-3, weight_decay=0.1)
        for B in (4, 256)
    ]
    assert adam.decay_timescale_epochs(256, fixed[1].lr, 0.1, n_train) > 7 * adam.decay_timescale_epochs(
        4, fixed[0].lr, 0.1, n_train
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_fixed_trial_gets_the_rules_betas_eps_and_decay(reduction):
    spec = parse_spec(
        spec_dict(
            space={
                "batch_sizes": [8, 32, 128],
                "lr_per_sample": {"low": 1e-5, "high": 1e-1},
                "reductions": ["mean", "sum"],
                "optimizers": ["adamw"],
                "rules": {"adamw": "sde"},
                "betas": [0.9, 0.99],
                "eps": 1e-6,
                "reference_batch_size": 32,
                "weight_decay": {"value": 0.1, "mode": "decoupled", "tie": "timescale"},
            }
        )
    )
    trial = optuna.trial.FixedTrial(
        {"batch_size": 128, "reduction": reduction, "optimizer": "adamw", "lr_per_sample_adamw": 2e-3}
    )
    config = suggest(trial, spec.space, seed=0)
    assert config["beta1"] == pytest.approx(1 - 4 * 0.1) and config["beta2"] == pytest.approx(1 - 4 * 0.01)
    assert config["eps"] == pytest.approx(1e-6 / 2 * (128 if reduction == "sum" else 1))
    assert config["weight_decay"] == pytest.approx(0.1 * 4**0.5)
    assert config["lr"] == pytest.approx(2e-3 * 128**0.5)


def test_reference_batch_size_defaults_to_the_smallest_swept():
    spec = parse_spec(
        spec_dict(
            space={
                "batch_sizes": [64, 16],
                "lr_per_sample": {"low": 1e-4, "high": 1e-2},
                "optimizers": ["adam"],
                "rules": {"adam": "sqrt_halflife"},
            }
        )
    )
    assert spec.space.ref_batch_size == 16
    config = suggest(
        optuna.trial.FixedTrial(
            {"batch_size": 64, "reduction": "mean", "optimizer": "adam", "lr_per_sample_adam": 1e-3}
        ),
        spec.space,
        0,
    )
    assert config["beta2"] == pytest.approx(0.999**4)


def _space(**kw):
    base = {"batch_sizes": [16, 64], "lr_per_sample": {"low": 1e-4, "high": 1e-2}, "optimizers": ["sgd", "adamw"]}
    return {**base, **kw}


@pytest.mark.parametrize(
    "space,field,value",
    [
        (_space(rules={"sgd": "sde"}), "space", "rules.sgd"),
        (_space(rules={"adamw": "sqrt_beta"}), "space.rules.adamw", "sqrt_beta"),
        (_space(betas=[0.9, 1.0]), "space", "betas.1"),
        (_space(reference_batch_size=0), "space.reference_batch_size", "0"),
        (_space(weight_decay={"value": 0.1, "tie": "timescale"}), "space", "weight_decay.tie"),
        (_space(weight_decay={"value": 0.1, "mode": "decoupled", "tie": "epochs"}), "space.weight_decay.tie", "epochs"),
        (
            _space(optimizers=["adam"], rules={"adam": "sde"}, schedules=["batch_growth"]),
            "space",
            "batch_growth",
        ),
    ],
)
def test_bad_rule_settings_name_the_field(space, field, value):
    with pytest.raises(SpecError) as info:
        parse_spec(spec_dict(space=space))
    message = str(info.value)
    assert field in message and value in message and "\n" not in message


def test_sde_rule_on_sgd_is_refused_by_derive():
    with pytest.raises(ValueError, match="rule"):
        derive(batch_size=8, reduction="mean", optimizer="sgd", lr_per_sample=1e-3, rule="sde")


def _rule_export(tmp_path, rule, tie="fixed", reduction="mean"):
    import json

    from services.results.settings import settings_doc

    space = {
        "reference_batch_size": 32,
        "betas": [0.9, 0.99],
        "eps": 1e-8,
        "weight_decay": 0.1,
        "decoupled_decay": True,
        "decay_tie": tie,
        "momentum": 0.9,
        "warmup_samples": 2048,
    }
    lr_ref = 1e-3 * 32**0.5
    const = {
        "optimizer": "adamw",
        "reduction": reduction,
        "k": 0.5,
        "lr_per_sample": 1e-3,
        "formula": "lr = 0.001 * batch_size**0.5",
        "batch_sizes_swept": [4, 128],
        "settings": settings_doc("adamw", reduction, rule, space, 5000, 2048, lr_ref),
    }
    path = tmp_path / f"{rule}.json"
    path.write_text(json.dumps({"sweep": rule, "constants": [const]}))
    return path, const


def test_export_settings_carry_the_per_sample_constants(tmp_path):
    _, halflife = _rule_export(tmp_path, "sqrt_halflife", tie="timescale")
    per = halflife["settings"]["per_sample"]
    assert per["beta2_halflife_samples"] == pytest.approx(adam.halflife_samples(0.99, 32))
    assert per["beta2_halflife_fixed"] and not per["beta1_halflife_fixed"] and per["decay_timescale_fixed"]
    tau = per["decay_timescale_epochs"]
    assert tau == pytest.approx(32 / (1e-3 * 32**0.5 * 0.1 * 5000))
    assert halflife["settings"]["formulas"]["beta2"] == "beta2 = 0.99 ** (batch_size / 32)"
    assert halflife["settings"]["formulas"]["weight_decay"] == "weight_decay = 0.1 * (batch_size / 32) ** 0.5"
    _, sde = _rule_export(tmp_path, "sde", reduction="sum")
    per = sde["settings"]["per_sample"]
    assert per["beta1_halflife_fixed"] and per["beta2_halflife_fixed"] and not per["decay_timescale_fixed"]
    assert per["eps_times_sqrt_batch"] == pytest.approx(1e-8 * 32**0.5)
    assert sde["settings"]["formulas"]["eps"] == f"eps = {1e-8 * 32**0.5:.6g} * batch_size / sqrt(batch_size)"


@pytest.mark.parametrize("rule", ["sqrt", "sqrt_halflife", "sde"])
def test_lr_prints_the_whole_setting_as_one_line_and_as_json(tmp_path, rule):
    import json

    from tests.test_cli import run_cli

    path, _ = _rule_export(tmp_path, rule, tie="timescale")
    as_json = run_cli("lr", path, "--batch-size", 128, "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    setting = json.loads(as_json.stdout)
    hp = derive(
        batch_size=128,
        reduction="mean",
        optimizer="adamw",
        lr_per_sample=1e-3,
        rule=rule,
        weight_decay=0.1,
        decoupled_decay=True,
        eps=1e-8,
        betas=(0.9, 0.99),
        reference_batch_size=32,
        decay_tie="timescale",
    )
    for name in ("lr", "beta1", "beta2", "eps", "weight_decay"):
        assert setting[name] == pytest.approx(getattr(hp, name), rel=1e-9), name
    assert setting["warmup_samples"] == 2048 and setting["batch_size"] == 128
    assert setting["decay_timescale_epochs"] == pytest.approx(128 / (hp.lr * hp.weight_decay * 5000))
    assert setting["warnings"] == []  # inside the swept 4..128
    text = run_cli("lr", path, "--batch-size", 128, cwd=tmp_path)
    line = next(x for x in text.stdout.splitlines() if x.startswith("  at B = 128: "))
    assert f"beta2={hp.beta2:.6g}" in line and "warmup_samples=2048" in line and "(decay timescale" in line
    assert "--json" not in text.stdout
    both = run_cli("lr", path, "--batch-size", 128, "--json", "--value-only", cwd=tmp_path)
    assert both.returncode == 2
