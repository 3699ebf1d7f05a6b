"""Stand-in of Forge's backend/sampling/ (see the package docstring)."""
