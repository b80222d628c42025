"""Command-line tools beside the main CLI: the benchmark and the sampler-steps sweep."""
