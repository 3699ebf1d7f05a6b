"""What every part of the web-UI adapter shares: the host, the logger, the job's attribute on `p`, how a user is
told."""

from __future__ import annotations

import logging
from typing import Any

from .host import UnsupportedHost, pick_host

logger = logging.getLogger("t_sam")

HOST = pick_host()  # A1111 or Forge, decided once when the script loads (host.py)
if isinstance(HOST, UnsupportedHost):  # said once at startup; each generation with T-SAM on says it again
    logger.warning("T-SAM: %s; T-SAM stays off in this web UI.", HOST.reason)

JOB_ATTR = "tsam_job"  # the Job lives on its p; X/Y/Z cells are shallow copies of p and must not share it


# What T-SAM does once something went wrong: said after the reason in the user's line (`line`), never written into
# the infotext, which records the reason alone (infotext.py). Reasons and consequences travel apart as data.
WITHOUT = "generating without T-SAM"
REST_WITHOUT = "generating the rest without T-SAM"
STOPS_HERE = "T-SAM stops here"
OFF_FOR_THE_REST = "T-SAM is off for the rest of this generation"


def line(reason: str, consequence: str) -> str:
    """The user's line for a reason and what T-SAM does about it."""
    return f"{reason}; {consequence}."


def tell(p: Any, message: str) -> None:
    """One line in the console and, where the host supports it, under the image in the web UI."""
    message = message.removeprefix("T-SAM: ")  # AlignConfig's own messages already carry the prefix
    logger.warning("T-SAM: %s", message)
    comment = getattr(p, "comment", None)
    if callable(comment):
        comment(f"T-SAM: {message}")
