"""T-SAM in the AUTOMATIC1111 web UI and in Forge (txt2img): a thin shell.

The method is in `lib_align` (host-free), the host glue in `lib_align/webui/` (which picks the A1111 or the Forge
adapter when this file loads), the accordion's layout in `lib_align/ui.py`. The host executes this file as a module
named after it with the extension root on sys.path, which is why `lib_align` is imported here at the top and not
relatively.
"""

from modules import scripts

from lib_align import webui
from lib_align.config import AlignConfig
from lib_align.ui import TITLE, build

# Once per import. The host clears every callback before it (re)imports the scripts, so this never piles up.
webui.register_callbacks()


class TSamScript(scripts.Script):
    """The "T-SAM" accordion. Argument vector: lib_align.script_args.POSITIONAL."""

    section = "accordions"  # beside Hires fix and Refiner
    create_group = False  # the InputAccordion is the whole UI; no extra gr.Group around it
    prompt_box = None  # the tab's prompt textbox, for "Analyze prompt" (created before any script's ui())

    def title(self):
        return TITLE  # API key: "t-sam"

    def show(self, is_img2img):
        return False if is_img2img else scripts.AlwaysVisible

    def after_component(self, component, **kwargs):
        if kwargs.get("elem_id") == webui.PROMPT_ELEM_ID:
            self.prompt_box = component

    def ui(self, is_img2img):
        # Also called by the API to read defaults: build components only, register nothing global.
        import gradio as gr
        from modules.ui_components import InputAccordion

        controls = build(gr, InputAccordion, self.elem_id, prompt=self.prompt_box, analyze=webui.analyze_prompt)
        self.infotext_fields = webui.paste_fields(controls.enabled, controls.settings)
        self.paste_field_names = AlignConfig.infotext_keys()
        return controls.inputs

    def process(self, p, *args):
        webui.process(p, args)

    def process_before_every_sampling(self, p, *args, **kwargs):
        webui.before_sampling(p)

    def post_sample(self, p, ps, *args):
        webui.after_sampling(p)

    def postprocess(self, p, processed, *args):
        webui.finish(p, processed)
