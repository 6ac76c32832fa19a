"""Evaluation in simulation: env adapters, rollouts, demo collection, metrics and videos."""
