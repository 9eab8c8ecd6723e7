"""The library's own error types.

Every error a user can cause (bad data, bad config, bad run directory) is a :class:`SelfsupError`
whose message is one paragraph saying what went wrong and what to do. The command line prints the
message and exits with code 2 instead of showing a traceback.
"""

from __future__ import annotations


class SelfsupError(Exception):
    """Base class: a user-facing error with a one-paragraph message naming the fix."""

    exit_code = 2


class DataError(SelfsupError):
    """Missing, corrupt or inconsistent dataset files."""


class ConfigError(SelfsupError):
    """Unknown keys, wrong types or out-of-range values in a configuration."""


class RunError(SelfsupError):
    """A run directory or checkpoint that cannot be used (not a run, wrong method, corrupt)."""


class NonFiniteLossError(SelfsupError):
    """A loss term became NaN or Inf during training."""


class TrainingStopped(SelfsupError):
    """Training stopped by the user (Ctrl-C) before anything could be saved."""

    exit_code = 130
