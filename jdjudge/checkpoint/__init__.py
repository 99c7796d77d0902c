"""What a run keeps on disk: Orbax checkpoints, resume checks, preemption signals and the
metrics log. The training loop calls these at its edges; nothing here computes a step."""
