"""`python -m evaluation --ckpt sd15.safetensors --clip CLIP --out DIR` (see evaluation/cli.py)."""

import sys

from .cli import main

sys.exit(main())
