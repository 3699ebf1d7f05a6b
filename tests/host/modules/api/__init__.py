"""Mirrors modules/api/ (the package); see api.py."""
