"""Mirrors modules/call_queue.py: `queue_lock`, held by every generation (wrap_gradio_gpu_call, the API's
queue_lock). 1.10 uses a FIFO lock with the same `acquire(blocking)` / `release` / context-manager interface."""

from __future__ import annotations

import threading

queue_lock = threading.Lock()
