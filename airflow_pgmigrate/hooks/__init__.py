"""Airflow hooks of airflow-pgmigrate: thin adapters from Airflow connections to the engine."""
