"""Single-purpose helpers: config composition and instantiate, CLI and run dirs, distributed, LR schedule, layer decay, checkpoints, metrics, logging, sweeps."""
