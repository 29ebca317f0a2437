"""Every test of tests/peer carries the ``peer`` marker (and ``integration``: they run against real servers)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/peer/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.peer)
            item.add_marker(pytest.mark.integration)
