"""Airflow version flags, kept in this provider on purpose (no dependency for a few comparisons)."""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version

#: Airflow 3 ships its core as the apache-airflow-core distribution.
AIRFLOW_VERSION = Version(Version(version("apache-airflow-core")).base_version)
AIRFLOW_V_3_1_PLUS = AIRFLOW_VERSION >= Version("3.1.0")
AIRFLOW_V_3_3_PLUS = AIRFLOW_VERSION >= Version("3.3.0")

__all__ = ["AIRFLOW_VERSION", "AIRFLOW_V_3_1_PLUS", "AIRFLOW_V_3_3_PLUS"]
