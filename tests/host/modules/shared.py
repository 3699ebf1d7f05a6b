"""Mirrors modules/shared.py, shared_options.py and shared_state.py: only the options and state T-SAM and the
stand-in read. Defaults are the host's."""

from __future__ import annotations

import types

import torch


class Options:
    """modules/shared_options.py defaults for the options the stand-in reads."""

    def __init__(self) -> None:
        self.CLIP_stop_at_last_layers = 1
        self.use_old_scheduling = False
        self.emphasis = "Original"
        self.comma_padding_backtrack = 20
        self.skip_early_cond = 0.0
        self.pad_cond_uncond = False
        self.batch_cond_uncond = True
        self.s_min_uncond_all = False
        self.eta_ddim = 0.0
        self.eta_ancestral = 1.0
        self.samples_save = True  # "Always save all generated images"
        self.samples_format = "png"
        self.enable_pnginfo = True
        self.return_grid = True  # "Show grid in gallery"
        self.grid_only_if_multiple = True


class State:
    """modules/shared_state.py: the flags Interrupt / Skip set and the progress text."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.interrupted = False
        self.skipped = False
        self.textinfo: str | None = None
        self.textinfo_history: list[str] = []  # stand-in only: every progress text shown, for tests
        self.job = ""
        self.job_count = 0
        self.job_no = 0
        self.sampling_step = 0
        self.sampling_steps = 0

    def __setattr__(self, name: str, value: object) -> None:
        if name == "textinfo" and value is not None and hasattr(self, "textinfo_history"):
            self.textinfo_history.append(str(value))
        super().__setattr__(name, value)

    def begin(self, job: str = "") -> None:
        """A new job from the UI or API: Interrupt / Skip from the previous one no longer apply."""
        self.interrupted = False
        self.skipped = False
        self.job = job
        self.textinfo = None

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    def nextjob(self) -> None:
        self.job_no += 1
        self.sampling_step = 0


opts = Options()
cmd_opts = types.SimpleNamespace(lowvram=False, medvram=False, disable_nan_check=False)
state = State()
sd_model = None  # set by the test harness to a HostModel
device = torch.device("cpu")
total_tqdm = types.SimpleNamespace(update=lambda: None, clear=lambda: None)
