"""pytest runs every notebook here through nbmake (pytest.ini: --nbmake), small.

Each notebook's "parameters" cell reads SPECTRAL_DIFFUSION_NOTEBOOK_QUICK: full settings by default (what a
Colab user runs), tiny sizes when it is "1". It is set here, at import, so the kernels nbmake starts
inherit it; no library code reads it. Run the full notebooks with
`SPECTRAL_DIFFUSION_NOTEBOOK_QUICK=0 python -m pytest notebooks/`.

While a notebook runs (and only then, so the tests' own process is untouched), its kernel also gets
XLA's lowest backend optimisation level: a quick notebook's time is almost all XLA:CPU compilation of
tiny models, which this roughly halves; the Python code path is the same.
"""
import os

QUICK_VAR = "SPECTRAL_DIFFUSION_NOTEBOOK_QUICK"
QUICK_XLA_FLAG = "--xla_backend_optimization_level=0"

os.environ.setdefault(QUICK_VAR, "1")

_saved_xla_flags = []


def pytest_runtest_setup(item):
  if os.environ.get(QUICK_VAR) == "1":
    _saved_xla_flags.append(os.environ.get("XLA_FLAGS"))
    os.environ["XLA_FLAGS"] = f"{_saved_xla_flags[-1] or ''} {QUICK_XLA_FLAG}".strip()


def pytest_runtest_teardown(item):
  if _saved_xla_flags:
    saved = _saved_xla_flags.pop()
    if saved is None:
      os.environ.pop("XLA_FLAGS", None)
    else:
      os.environ["XLA_FLAGS"] = saved
