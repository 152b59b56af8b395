"""Helpers for the Hydra entry points: config printing, instantiation, results."""
