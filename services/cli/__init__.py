"""The samplewise command: main.py (sweep, export, lr, ...) and local.py (up, down, status, logs, ui)."""
