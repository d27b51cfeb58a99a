"""samplewise services: spec, workloads, training, Ray Tune runner, MLflow tracking, export, CLI.

Modules (import what you need; nothing heavy is imported here):

- :mod:`services.spec`      the frozen ``SweepSpec`` and ``load_spec``
- :mod:`services.metrics`   reserved metric, param and tag names
- :mod:`services.training.workloads` built-in workloads and the plug-in interface
- :mod:`services.training.train`     the training step and trial loop
- :mod:`services.orchestration.runner`    the Ray Tune sweep
- :mod:`services.tracking.callback`  the MLflow adapter (a ``tune.Callback``)
- :mod:`services.results.analysis`  best constants from a table of trials
- :mod:`services.results.export`    read back from MLflow, write exports, look up an LR
- :mod:`services.cli.main`       the ``samplewise`` command
"""
