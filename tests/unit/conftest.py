"""Unit tests need no PostgreSQL server; the AWS fixtures (moto_server, aws_env) live in tests/conftest.py."""
