"""Pavia Centre (ROSIS, 102 bands), SCDM's protocol."""
