"""The dashboard's HTTP-level tests run against the API's in-process app (tests/helpers/api.py,
which installs the dashboard as the controller does)."""

from tests.api.conftest import api, api_both

__all__ = ["api", "api_both"]
