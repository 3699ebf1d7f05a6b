"""Run by the web UI on launch and after "Install from URL" (skipped with --skip-install).

T-SAM needs nothing beyond what AUTOMATIC1111 itself ships (torch, transformers, ldm, k-diffusion), so this installs
nothing: pip-installing any of those here would replace the host's pinned versions. It only says so when one is
missing, which means the host itself is broken or is not AUTOMATIC1111.
"""

import launch

HOST_PACKAGES = ("torch", "transformers")

missing = [name for name in HOST_PACKAGES if not launch.is_installed(name)]
if missing:
    print(f"T-SAM: {', '.join(missing)} not found; these come with the web UI itself, T-SAM does not install them.")
