"""Training: config, data stream, loop, checkpoints."""
