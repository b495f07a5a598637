"""The one exception tree of telemetryd.

Every error a user can cause or meet carries a one-line message that names what was
wrong and what was expected; the CLI prints that line and picks the exit code from the
class, so no traceback reaches an operator unless they ask for it with ``--debug``::

    TelemetrydError
    ├── ConfigError          bad configuration (file, dotted key, expected); exit 2
    ├── DecodeError          a payload that breaks the wire contract (defined in codec)
    ├── SourceUnavailable    a source cannot be used on this machine (no NVML, no RAPL)
    └── CollectorError       a source failed for this interval; the report carries it
        └── CollectorTimeout a source did not answer within its deadline
"""

from __future__ import annotations


class TelemetrydError(Exception):
    """Base class; the message is the one line shown to the operator."""


class ConfigError(TelemetrydError):
    """One or more configuration problems, each a line naming file, key and expectation."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SourceUnavailable(TelemetrydError):
    """A source does not exist or cannot be read here; reported once as absent, not per interval."""


class CollectorError(TelemetrydError):
    """A source failed during one sample; the report carries the message, the agent goes on."""


class CollectorTimeout(CollectorError):
    """A source did not answer within its deadline (a hung NVML call, a stale NFS mount)."""
