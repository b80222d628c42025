"""Pavia University (ROSIS, 103 bands), AnyBand-Diff's protocol."""
