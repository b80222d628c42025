"""python -m spectral_diffusion.pretrained WORKDIR NAME: ship a trained workdir's models as NAME."""
import os
import sys

from spectral_diffusion import pretrained

if len(sys.argv) != 3:
  sys.exit("usage: python -m spectral_diffusion.pretrained WORKDIR NAME")
print(pretrained.export(sys.argv[1], os.path.join(os.path.dirname(pretrained.__file__), sys.argv[2])))
