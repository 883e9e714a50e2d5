"""The package's one exception family.

Every error grokinterp raises on purpose derives from :class:`GrokinterpError`, so callers can
catch the whole family with one ``except``; the subclasses say which part of the data flow
refused the input. Messages always name what failed: the config field, the file, the shape.
"""

from __future__ import annotations

__all__ = ["GrokinterpError", "ConfigError", "RunError", "AnalysisError"]


class GrokinterpError(ValueError):
    """Base class of every error grokinterp raises deliberately."""


class ConfigError(GrokinterpError):
    """An invalid configuration value; the message starts with the field's dotted name."""


class RunError(GrokinterpError):
    """A run directory or one of its files is missing, malformed or inconsistent."""


class AnalysisError(GrokinterpError):
    """An analysis got arguments it cannot work with (wrong p, unknown frequency, empty stack)."""
