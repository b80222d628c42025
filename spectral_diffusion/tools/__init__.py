"""Command-line tools beside the main CLI: the benchmark, the sampler-steps sweep and the RTM emulator trainer."""
