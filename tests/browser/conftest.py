"""The real-daemon fixture of the integration suite, for the browser test that drives the whole daemon."""

from tests.integration.conftest import daemon  # noqa: F401 - a pytest fixture, used by name
