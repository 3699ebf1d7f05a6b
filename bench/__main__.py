"""`python -m bench [--quick | --smoke]`: see bench/run.py."""

from .run import main

raise SystemExit(main())
