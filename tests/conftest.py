"""Fixtures shared by every test directory (registries, test images): tests/support/."""

pytest_plugins = ["tests.support.fixtures"]
