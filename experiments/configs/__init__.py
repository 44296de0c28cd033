"""Experiment presets: one frozen dataclass per table, each with its exact command."""
