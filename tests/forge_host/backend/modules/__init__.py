"""Stand-in of Forge's backend/modules/ (see the package docstring)."""
