"""Mirrors Forge's modules/sd_hijack_open_clip.py, whose whole content is commented out: it imports and defines
nothing (Forge encodes prompts with backend/text_processing/classic_engine.py). It exists here so that the A1111
stand-in's sd_hijack_open_clip.py, reachable through this package's __path__, is not used for Forge."""
