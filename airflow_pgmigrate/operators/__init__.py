"""Operators: thin Airflow adapters around the migration engine, one module per step."""
