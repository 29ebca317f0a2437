"""Check results and the precheck report: structured for XCom, readable as a table in the log."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["passed", "warning", "failed", "skipped"]
_ORDER = {"failed": 0, "warning": 1, "passed": 2, "skipped": 3}


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one precheck item.

    ``fix`` says how to resolve a failure or warning: the SQL to run, or the console setting to change.
    """

    name: str
    status: Status
    detail: str
    fix: str = ""
    #: The objects the item is about (tables, functions, sessions), for reports and tests.
    objects: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def passed(name: str, detail: str, objects: list[str] | None = None) -> CheckResult:
    return CheckResult(name, "passed", detail, "", list(objects or []))


def warning(name: str, detail: str, fix: str = "", objects: list[str] | None = None) -> CheckResult:
    return CheckResult(name, "warning", detail, fix, list(objects or []))


def failed(name: str, detail: str, fix: str = "", objects: list[str] | None = None) -> CheckResult:
    return CheckResult(name, "failed", detail, fix, list(objects or []))


def skipped(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "skipped", detail)


@dataclass
class PrecheckReport:
    migration: str
    results: list[CheckResult] = field(default_factory=list)
    #: Security-group ingress rules the precheck added (to remove at the end of the migration).
    added_ingress_rules: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "warning"]

    def result(self, name: str) -> CheckResult:
        """The (first) result of the item ``name``; KeyError when the item did not run."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def statuses(self) -> dict[str, str]:
        """Item name -> worst status among its results."""
        out: dict[str, str] = {}
        for r in self.results:
            if r.name not in out or _ORDER[r.status] < _ORDER[out[r.name]]:
                out[r.name] = r.status
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "passed": not self.failures,
            "counts": {s: sum(1 for r in self.results if r.status == s) for s in _ORDER},
            "results": [r.to_dict() for r in self.results],
            "added_ingress_rules": list(self.added_ingress_rules),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecheckReport:
        """Rebuild a report from :meth:`to_dict` output (for example an XCom value)."""
        results = [CheckResult(r["name"], r["status"], r["detail"], r.get("fix", ""), list(r.get("objects", [])))
                   for r in data.get("results", [])]
        return cls(data["migration"], results, list(data.get("added_ingress_rules", [])))

    def format_table(self, width: int = 100) -> str:
        """A fixed-width table: one row per item, then the detail and fix of each failure and warning."""
        rows = sorted(self.results, key=lambda r: _ORDER[r.status])
        name_w = max([len("item")] + [len(r.name) for r in rows])
        lines = [f"precheck report migration={self.migration} "
                 + " ".join(f"{s}={n}" for s, n in self.to_dict()["counts"].items())]
        lines.append(f"{'item'.ljust(name_w)}  {'status'.ljust(7)}  detail")
        lines.append(f"{'-' * name_w}  {'-' * 7}  {'-' * max(10, width - name_w - 11)}")
        for r in rows:
            detail = r.detail if len(r.detail) <= width else r.detail[: width - 3] + "..."
            lines.append(f"{r.name.ljust(name_w)}  {r.status.upper().ljust(7)}  {detail}")
        todo = [r for r in rows if r.status in ("failed", "warning")]
        if todo:
            lines.append("")
            lines.append("what to do:")
            for r in todo:
                lines.append(f"* [{r.status.upper()}] {r.name}: {r.detail}")
                if r.fix:
                    for fix_line in r.fix.splitlines():
                        lines.append(f"    fix: {fix_line}")
        return "\n".join(lines)


__all__ = ["CheckResult", "PrecheckReport", "Status", "failed", "passed", "skipped", "warning"]
