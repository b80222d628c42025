"""AnyBand-Diff: every band of a grid from any subset of its bands (a sensor's, or bands lost at random)."""
