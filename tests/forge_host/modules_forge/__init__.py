"""Stand-in of Forge's `modules_forge/` package (lllyasviel/stable-diffusion-webui-forge): a marker only.

Its presence is how code tells Forge from A1111 (`importlib.util.find_spec("modules_forge")`); nothing of the real
package (main_entry, forge_canvas, shared options, ...) is mirrored.
"""
