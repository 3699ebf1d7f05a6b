"""Stand-in of Forge's backend/text_processing/ (see the package docstring)."""
