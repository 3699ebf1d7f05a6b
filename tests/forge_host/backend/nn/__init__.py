"""Stand-in of Forge's backend/nn/ (see the package docstring)."""
