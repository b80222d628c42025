"""The one error type for bad user input: the CLI prints its message on one line and exits with code 2."""


class UserInputError(ValueError):
  """Bad input from the user (file, config, array). The message names the problem and the fix."""


class TrainingDiverged(RuntimeError):
  """A NaN or Inf appeared in the loss or the gradients; the last good checkpoint is kept."""
