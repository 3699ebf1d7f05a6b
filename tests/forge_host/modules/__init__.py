"""A small stand-in of Forge's `modules` package (lllyasviel/stable-diffusion-webui-forge at dfdcbab), for tests.

Forge keeps A1111 1.10's `modules.*` API for extensions; only the files where Forge behaves differently are here:
processing.py (inference mode around the batch loop, forge_objects per batch, hires fix), sd_samplers_*.py (the CFG
denoiser hands callbacks its own x; the sampling function; ForgeScheduleLinker), sd_schedulers.py, rng.py,
devices.py (no NaN check), sd_hijack*.py (empty in Forge). Everything else is the A1111 stand-in's file
(tests/host/modules, appended to this package's __path__ below; e.g. sd_samplers.py's table, which then lists
this package's samplers), after checking in Forge's source that the API the
extension and the stand-in use is the same there: scripts.py (Script hooks incl. process_before_every_sampling /
before_hr / post_sample, AlwaysVisible, load_scripts, ScriptRunner, PostSampleArgs), script_callbacks.py
(CFGDenoiserParams' fields and order, on_cfg_denoiser, on_before_ui, on_infotext_pasted,
remove_callbacks_for_function), shared.py / shared_options.py / shared_state.py (opts, state, cmd_opts,
sd_model), infotext_utils.py (PasteField, quote, unquote, parse_generation_parameters), call_queue.py,
images.py (save_image's signature), ui_components.py (InputAccordion), api/api.py (script args), prompt_parser.py
(SdConditioning — Forge's also takes distilled_cfg_scale, set as an attribute here —, get_learned_conditioning,
get_multicond_learned_conditioning, reconstruct_cond_batch, reconstruct_multicond_batch, DictWithShape — Forge's
also has advanced_indexing, which backend/sampling/condition.py does without).
"""

import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),  # noqa: F821
                             "host", "modules"))
