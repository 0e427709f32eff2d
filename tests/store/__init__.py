"""Tests of the control plane's store, on SQLite and PostgreSQL."""
