"""Local services for make up / down / status / logs, and the browser check of the MLflow UI."""
