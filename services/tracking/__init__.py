"""MLflow: opening the store and its queries, a submission's runs, the ordered writer, and the
thin Tune callback (the only module here that imports Ray)."""
