"""The errors samplewise shows a user as one line: defined here, so the CLI can catch them
without importing Ray, MLflow or torch. Each carries the exit status the CLI returns for it.

Bad input (exit status 2): :class:`SpecError`, :class:`ExportError`, :class:`ResumeError`.
An environment problem (exit status 1): :class:`TrackingError`, :class:`ServiceError`.
An interrupted sweep (exit status 130): :class:`SweepInterrupted`.
"""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
"""Exit statuses: success; a failed run or an environment problem; bad input; interrupted
(128 + SIGINT, what a shell reports for Ctrl-C)."""


class SamplewiseError(Exception):
    """An error shown as one line, ``samplewise: error: <message>``, with ``exit_status``."""

    exit_status = EXIT_FAILED
    prefix = "error: "


class SpecError(SamplewiseError, ValueError):
    """A sweep spec that cannot be run."""

    exit_status = EXIT_USAGE


class ExportError(SamplewiseError, ValueError):
    """Nothing to export, or an export file that cannot be used."""

    exit_status = EXIT_USAGE


class ResumeError(SamplewiseError, ValueError):
    """No sweep to resume."""

    exit_status = EXIT_USAGE


class ServiceError(SamplewiseError, RuntimeError):
    """A local service (MLflow server, Ray head) that cannot be started or reached."""


class TrackingError(SamplewiseError, RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


class SweepInterrupted(SamplewiseError, RuntimeError):
    """Ctrl-C or SIGTERM stopped a sweep driver; the sweep is left resumable."""

    exit_status = EXIT_INTERRUPTED
    prefix = ""
