"""Notifiers for the operability tests: one that always fails, to prove a lost alert never fails a migration."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseNotifier


class BrokenNotifier(BaseNotifier):
    """A notifier whose service is down: every call raises."""

    template_fields = ("text",)

    def __init__(self, *, text: str = "") -> None:
        super().__init__()
        self.text = text

    def notify(self, context: Any) -> None:
        raise ConnectionError(f"the alerting service is unreachable (text was {self.text!r})")
