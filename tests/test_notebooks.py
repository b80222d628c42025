"""Every notebook in notebooks/ runs end to end in a fresh kernel, small.

Each notebook's "parameters" cell reads SPECTRAL_DIFFUSION_NOTEBOOK_QUICK: full settings by default (what
a Colab user runs), tiny sizes when it is "1", which is what these tests set unless the variable is
already set (`SPECTRAL_DIFFUSION_NOTEBOOK_QUICK=0 python -m pytest tests/test_notebooks.py` runs them in
full). The kernel inherits the test run's environment (tests/conftest.py: the shared compilation cache and
XLA's lowest backend optimisation level).
"""
import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
QUICK_VAR = "SPECTRAL_DIFFUSION_NOTEBOOK_QUICK"
# A kernel's first start in a fresh virtualenv on a loaded 2-core machine has taken over 60 s (jupyter's
# default start-up timeout), which is not a notebook failure.
KERNEL_STARTUP_TIMEOUT_S = 600
CELL_TIMEOUT_S = 3600


def kernel_env():
  env = dict(os.environ)
  env.setdefault(QUICK_VAR, "1")
  return env


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                          startup_timeout=KERNEL_STARTUP_TIMEOUT_S)
  client.execute(cwd=str(path.parent), env=kernel_env())  # a failing cell raises CellExecutionError
