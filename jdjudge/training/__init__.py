"""The step and what it is built from: the train state, pure train/eval steps, the optimizer,
and the builders that turn a config into a sharded model, state and jitted steps."""
