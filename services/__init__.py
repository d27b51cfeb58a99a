"""samplewise services, by where the code runs (each folder imports only from those above it):

- top level: :mod:`services.errors`, :mod:`services.metrics` (reserved names),
  :mod:`services.spec` (the frozen ``SweepSpec``), :mod:`services.paths`, :mod:`services.processes`
- :mod:`services.training`      in each trial's worker: workloads, the step and the loop
- :mod:`services.tracking`      MLflow: the store, a submission's runs, the writer, the Tune callback
- :mod:`services.results`       analysis, fits, export, held-out test, compare, plots
- :mod:`services.orchestration` the Tune driver: runner, GroupedASHA, reaper
- :mod:`services.ops`           make up / down / status
- :mod:`services.cli`           the ``samplewise`` command
- :mod:`services.bench`         make bench

Nothing heavy is imported here: import what you need.
"""
