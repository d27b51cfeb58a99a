"""What runs in each trial's worker: the workloads, the training step and loop, the noise
scale, the sum/mean equivalence check."""
