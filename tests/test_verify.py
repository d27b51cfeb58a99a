"""make verify: the equivalence table passes, and fails when a rule is broken."""

from search_spaces import scaling
from services.cli import main as cli
from services.training.verify import verify


def test_all_rows_pass_with_the_rules_as_shipped():
    rows = verify(batch_size=24, steps=6)
    assert len(rows) == 13 and all(r.passed for r in rows)
    assert all(r.max_rel_diff <= 1e-9 for r in rows if r.expect_equal)
    assert all(r.max_rel_diff > 1e-3 for r in rows if not r.expect_equal)


def test_a_broken_rule_fails_the_check(monkeypatch):
    # Treat Adam like SGD under sum (lr / B, eps not rescaled): the Adam rows must fail.
    exponents = scaling.batch_exponents
    monkeypatch.setattr(scaling, "batch_exponents", lambda o, *a: exponents("sgd", *a))
    rows = {r.name: r for r in verify(batch_size=24, steps=6)}
    failed = [name for name, r in rows.items() if not r.passed]
    assert any(name.startswith("Adam ") for name in failed)
    assert any(name.startswith("AdamW") for name in failed)
    assert not any(name.startswith("SGD ") for name in failed)


def test_sgd_decoupled_decay_under_sum_must_scale_with_b(monkeypatch):
    # decoupled decay left unscaled under sum (SGD's LR there is the mean one over B): its row fails
    exponents = scaling.batch_exponents
    monkeypatch.setattr(
        scaling,
        "batch_exponents",
        lambda o, r, rule, d: {**exponents(o, r, rule, d), **({"weight_decay": 0} if d else {})},
    )
    rows = {r.name: r for r in verify(batch_size=24, steps=6)}
    assert not rows["SGD decoupled decay  sum(lambda*B) vs mean(lambda)"].passed
    assert rows["SGD coupled L2  sum(lambda*B) vs mean(lambda)"].passed


def test_cli_exit_status_follows_the_table(monkeypatch, capsys):
    assert cli.main(["verify", "--steps", "4"]) == 0
    assert "13 passed, 0 failed" in capsys.readouterr().out
    # the sum reduction no longer rescales anything: the sum rows must fail
    monkeypatch.setattr(scaling, "batch_exponents", lambda *a: {"lr": 0, "eps": 0, "weight_decay": 0})
    assert cli.main(["verify", "--steps", "4"]) == 1
    assert "FAIL" in capsys.readouterr().out
