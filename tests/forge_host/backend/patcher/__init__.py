"""Stand-in of Forge's backend/patcher/ (see the package docstring)."""
