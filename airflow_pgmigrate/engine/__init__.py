"""The migration engine: catalog, checks, schema, copy, decoding, apply and verification.

Nothing under this package imports Airflow; operators are thin adapters around it.
"""
