"""Quiet by default: Ray's lines that say nothing to a samplewise user go to the sweep's quiet
log, not the terminal; ``--verbose`` (SAMPLEWISE_VERBOSE=1) keeps them on the terminal."""

import io
import logging

import pytest

from services.cli import main as cli
from services.orchestration import runner

TOKEN = "ray._private.authentication.authentication_token_setup"
NOTICE = "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out."


@pytest.fixture
def terminal():
    """What reaches a handler on Ray's token logger (the terminal, in a sweep)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(TOKEN)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_ray_noise_goes_to_the_quiet_log_and_the_rest_to_the_terminal(tmp_path, monkeypatch, terminal):
    monkeypatch.setenv("SAMPLEWISE_HOME", str(tmp_path))
    monkeypatch.delenv("SAMPLEWISE_VERBOSE", raising=False)
    runner.quiet_ray("mysweep")
    logger = logging.getLogger(TOKEN)
    logger.warning(NOTICE)
    logger.warning("the head node at 10.0.0.1 refused the token")
    assert terminal.getvalue() == "the head node at 10.0.0.1 refused the token\n"
    log = runner.quiet_log("mysweep")
    assert log == tmp_path / ".samplewise" / "logs" / "mysweep-ray.log"
    assert NOTICE in log.read_text() and "refused" not in log.read_text()


def test_verbose_keeps_everything_on_the_terminal(tmp_path, monkeypatch, terminal):
    monkeypatch.setenv("SAMPLEWISE_HOME", str(tmp_path))
    runner.quiet_ray("mysweep")  # the filter is installed once per process and stays
    monkeypatch.setenv("SAMPLEWISE_VERBOSE", "1")
    runner.quiet_ray("mysweep")
    logging.getLogger(TOKEN).warning(NOTICE)
    assert NOTICE in terminal.getvalue()


def test_the_verbose_flag_is_taken_by_sweep_resume_and_transfer():
    parser = cli.build_parser()
    for command in ("sweep", "resume", "transfer"):
        assert parser.parse_args([command, "x.yaml", "--verbose"]).verbose
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "x.yaml", "--verbose"])
