"""The Tune driver: the sweep runner, GroupedASHA, and the watcher that stops a killed driver's local Ray."""
