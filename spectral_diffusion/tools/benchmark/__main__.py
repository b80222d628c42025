"""python -m spectral_diffusion.tools.benchmark: see the package docstring."""
import sys

from spectral_diffusion.tools.benchmark.cli import main

sys.exit(main())
