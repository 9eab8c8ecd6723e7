"""Encoder and decoder networks."""
