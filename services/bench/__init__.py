"""make bench: samplewise measured against the limit and against what users would do instead."""
