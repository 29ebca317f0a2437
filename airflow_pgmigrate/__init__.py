"""airflow-pgmigrate: move a live PostgreSQL database to another PostgreSQL with minimal downtime.

This module must stay import-light: Airflow's provider discovery imports it before Airflow is configured.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
