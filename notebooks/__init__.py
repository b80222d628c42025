"""Not a library package: this file makes pytest import notebooks/conftest.py as `notebooks.conftest`, so
it does not replace tests/conftest.py, which the test modules import as `conftest`."""
