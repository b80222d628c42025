"""AnyBand-Diff as a `methods.Method`: every band of the grid from any subset of them."""
from spectral_diffusion import models, pipelines, settings
from spectral_diffusion.anyband import model
from spectral_diffusion.errors import UserInputError


class AnyBand:
  name = "anyband"
  file_mode = "repair"
  sections = ("masking", "physics", "repair")

  def check_config(self, config):
    settings.check_common(config)
    model.check_config(config)
    model.ablations(config)

  def load_data(self, config):
    return model.load_data(config)

  def train_and_evaluate(self, config, workdir):
    from spectral_diffusion.anyband import train
    return train.train_and_evaluate(config, workdir)

  def evaluate(self, config, workdir):
    from spectral_diffusion.anyband import evaluate
    return evaluate.evaluate(config, workdir)

  def load(self, workdir, config=None, **sample):
    return pipelines.AnyBand.load(workdir, config=config, **sample)

  def run_file(self, config, workdir, request):
    from spectral_diffusion.anyband import repair
    if request.input_bands:
      raise UserInputError("--input_bands is for --mode=sample (scdm configs); --mode=repair takes a cube on "
                           "the model's grid (missing bands NaN or --missing_bands) or --sensor=NAME")
    return repair.repair_file(config, workdir, request.input, request.output, input_key=request.input_key,
                              missing_bands=request.missing_bands, sensor=request.sensor,
                              wavelengths=request.wavelengths)

  def describe(self, config):
    """The model's size beside the paper's; needs data.num_bands (or reads the data for it)."""
    from spectral_diffusion.models import anyband_unet
    prior = model.check_config(config)
    n = config.data.num_bands or model.load_data(config).num_bands
    net = models.build_model(config.model, n)
    count = anyband_unet.parameter_count(net, max(net.min_size, config.data.crop_size), n)
    return "\n".join([
        f"anyband: {n} bands, model {config.model.name}, base {config.model.base_channels}, "
        f"mults {tuple(config.model.channel_mults)}, attention at levels {tuple(config.model.attn_levels)}, "
        f"CAM context {config.model.context_dim}, parameterisation {config.diffusion.parameterisation}, "
        f"prior {prior}",
        f"parameters: {count:,} (the paper reports {anyband_unet.PAPER_PARAMETERS / 1e6:.0f} M for its "
        f"configuration; see README)"])
