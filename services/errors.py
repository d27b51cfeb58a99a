"""The errors samplewise shows a user as one line: defined here, so the CLI can catch them
without importing Ray, MLflow or torch.

Bad input (exit status 2): :class:`SpecError`, :class:`ExportError`, :class:`ResumeError`.
An environment problem (exit status 1): :class:`TrackingError`.
"""


class SpecError(ValueError):
    """A sweep spec that cannot be run."""


class ExportError(ValueError):
    """Nothing to export, or an export file that cannot be used."""


class ResumeError(ValueError):
    """No sweep to resume."""


class ServiceError(RuntimeError):
    """A local service (MLflow server, Ray head) that cannot be started or reached."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


class SweepInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped a sweep driver; the sweep is left resumable."""


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
"""Exit statuses: success; a failed run or an environment problem; bad input; interrupted
(128 + SIGINT, what a shell reports for Ctrl-C)."""

USAGE_ERRORS = (SpecError, ExportError, ResumeError)
ENVIRONMENT_ERRORS = (TrackingError, ServiceError)
