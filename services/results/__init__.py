"""Reading a sweep back and judging it: the analysis, the LR fits and laws, the export,
the held-out test, schedule comparison, plots."""
