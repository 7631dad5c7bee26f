"""Every exception the project raises on purpose, in one small module that everything may import.

User errors (bad config, bad override, missing or inconsistent data, unreadable checkpoint or
weights file) derive from ``ConfigError``: the command line prints the one-line message and exits
with code 2 (``HYDRA_FULL_ERROR=1`` shows the traceback). The other classes are run outcomes the
command line maps to their own exit codes.
"""
from __future__ import annotations


class ConfigError(Exception):
    """A user error: the message says what is wrong and how to fix it (exit code 2)."""


class MissingKeyError(ConfigError, AttributeError, KeyError):
    """A config key the code needs is absent. Also an ``AttributeError`` and a ``KeyError``, so
    ``hasattr``, ``getattr(cfg, key, default)`` and ``except KeyError`` behave as on any mapping."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreError(ConfigError):
    """A dataset store is missing, inconsistent or incompatible with the config."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be read or does not fit the run."""


class CheckpointWriteError(ConfigError):
    """A checkpoint could not be written (disk full, quota, permission); the previous one is intact."""


class WeightsError(ConfigError):
    """A pretrained-weights file cannot be read or does not fit the model."""


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf losses too many optimizer steps in a row."""


class Preempted(Exception):
    """Raised after the preemption checkpoint is written; the command line exits with ``exit_code``
    (75 for a scheduler's signal: requeue; 130 for Ctrl-C)."""

    def __init__(self, message: str, exit_code: int = 75) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class TrialPruned(Exception):
    """A hyperparameter-search trial stopped by the search's pruner after a validation (not a failure)."""
