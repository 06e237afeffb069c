"""Errors that stop a run before it trains, shared by ``cl.run``, ``unlearn.run`` and the engine (no heavy imports)."""

from __future__ import annotations


class ConfigurationError(ValueError):
    """Bad input found before training; the message names the key, the value and what is allowed."""


class RunDirTaken(ConfigurationError):
    """The run directory is held by another run, or holds a run that this one may not continue; nothing was written
    there (no failure record either: the directory is not this run's)."""
