"""The project's exception types: one base class, so callers can catch everything we raise."""

from __future__ import annotations

from dataclasses import dataclass


class PgMigrateError(Exception):
    """Base class of every error raised by airflow-pgmigrate."""


class SyncError(PgMigrateError):
    """Incremental sync cannot go on (slot lost, DDL on the source, another applier running)."""


@dataclass(frozen=True)
class Problem:
    """One mistake in a migration config: where it is, what is wrong, and how to fix it."""

    field: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        from airflow_pgmigrate.engine.secrets import redact

        text = f"{self.field}: {self.message}"
        # A value echoed back from the config may be a URI with credentials typed into the wrong field.
        return redact(f"{text} (fix: {self.fix})" if self.fix else text)


class ConfigError(PgMigrateError):
    """A migration config is invalid. Carries every problem found, not only the first."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"invalid migration config{where} ({len(self.problems)} problem(s)):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))

    @property
    def fields(self) -> list[str]:
        return [p.field for p in self.problems]


class ConnectionConfigError(PgMigrateError):
    """An Airflow connection cannot be used for a migration (wrong type, missing host, ...)."""


class PrecheckFailed(PgMigrateError):
    """At least one precheck item failed; the message holds the whole report."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


__all__ = ["ConfigError", "ConnectionConfigError", "PgMigrateError", "PrecheckFailed", "Problem"]
