"""The page: the Gradio layout over an :class:`~ivmixed.app.state.App` and the callbacks wiring its fields, buttons
and tables to the app's requests. Nothing here decides anything the app does; gradio is imported only when a page
is built, so importing the package stays light.
"""

import inspect
import os
from typing import Any, Dict

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no telemetry, no version check

from ..config import IV_MIXED_KEYS, PIPELINE_NAMES, SETTINGS
from ..errors import SettingError
from ..lora_paths import DEFAULT_SCALE, available_loras, lora_search_dirs
from .fields import (CONTROLNET_NOTE, GUIDE_FIELDS, LABELS, MODEL_FIELDS, NO_LORA, PIPELINE_OWN, PRESET_NOTES, PRESETS,
                     TINY_CONTROLNET_NOTE, TINY_IP_ADAPTER_NOTE, guide_info, knob_info, knob_steps, preset_values,
                     render_error)
from .state import App, RequestError
from .tables import CALLS_HEADERS, HISTORY_HEADERS, calls_headers, history_choice, history_row, settings_difference

VIDEO_HEIGHT = 320
MAX_STEPS = 250
CSS = """
.preset-note { font-size: 0.9em; }
"""

GENERATE_INPUTS = ("prompt", "negative_prompt", "pipeline", "seed", "inference_step", "num_frames", "height", "width",
                   "guidance_scale") + IV_MIXED_KEYS + ("reference_compat", "lora", "lora_scale", "lora_target") + \
    MODEL_FIELDS + GUIDE_FIELDS


def build_ui(app: App):
    """The page over ``app``; returns the (not yet launched) ``gr.Blocks``."""
    import gradio as gr

    start = app.defaults()
    start_values = start.settings()
    loras = [NO_LORA] + available_loras(lora_search_dirs())
    fields: Dict[str, Any] = {}

    def knob(name: str):
        value = start_values[name]
        info = knob_info(name)
        if name == "interval_end":  # empty means the last step, whatever the number of steps
            return gr.Textbox(value="" if value is None else str(value), label=LABELS[name], info=info,
                              placeholder="last step", elem_id=f"knob-{name}")
        if name in ("interval_begin", "zz"):
            return gr.Number(value=value, label=LABELS[name], info=info, precision=0, elem_id=f"knob-{name}")
        if name == "reference_compat":
            return gr.Checkbox(value=value, label=LABELS[name], info=info, elem_id=f"knob-{name}")
        if name in LABELS and SETTINGS[name].type is float:
            top = 20.0 if name == "rho" else 15.0
            return gr.Slider(minimum=0.5 if name == "rho" else 0.0, maximum=top, step=0.5, value=value,
                             label=LABELS[name], info=info, elem_id=f"knob-{name}")
        return gr.Number(value=value, label=LABELS.get(name, name), info=info, elem_id=f"knob-{name}")

    def guide_file(name: str):
        # a gr.File with no file_types (not a gr.Image or gr.Video): gradio would open or refuse a bad file itself,
        # with a traceback in the log, where the run's check says in one line what the file is and what it takes
        return gr.File(value=None, label=LABELS[name], type="filepath", file_count="single", elem_id=f"guide-{name}")

    def guide_model(name: str, scale_name: str, value: str, scale: float, tiny_note: str, placeholder: str):
        """A guiding model's source and strength (IP-Adapter, ControlNet), in one column."""
        with gr.Column():
            fields[name] = gr.Textbox(value=value, label=LABELS[name],
                                      info=guide_info(name) + (" " + tiny_note if app.tiny else ""),
                                      placeholder=placeholder, elem_id=f"guide-{name}")
            fields[scale_name] = gr.Slider(0, 2, step=0.05, value=scale, label=LABELS[scale_name],
                                           info=guide_info(scale_name), elem_id=f"guide-{scale_name}")

    with gr.Blocks(title="IV-mixed sampler", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown("# IV-mixed sampler\nA video model samples the video while an image model refines every "
                    "frame. Each run also makes the standard video of the same seed, so the two can be compared."
                    + ("\n\n**Tiny random models** (`--tiny`): the videos are noise; this checks the install."
                       if app.tiny else ""))
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column(scale=2):
                    fields["prompt"] = gr.Textbox(value="", label=LABELS["prompt"], lines=2, elem_id="prompt",
                                                  placeholder="Two horses race across a grassy field at sunset.")
                    fields["negative_prompt"] = gr.Textbox(value="", label=LABELS["negative_prompt"], lines=1,
                                                           elem_id="negative-prompt")
                    with gr.Row():
                        fields["pipeline"] = gr.Dropdown(list(PIPELINE_NAMES), value=start.pipeline,
                                                         label=LABELS["pipeline"],
                                                         info="The video model; choosing one sets its size, "
                                                              "guidance and zz.")
                        fields["seed"] = gr.Number(value=start.seed, label=LABELS["seed"], precision=0,
                                                   info="Both videos start from this seed's noise.", elem_id="seed")
                        random_seed = gr.Checkbox(value=False, label="Random seed",
                                                  info="A new seed for each generation.")
                    with gr.Row():
                        fields["inference_step"] = gr.Slider(1, MAX_STEPS, step=1, value=start.inference_step,
                                                             label=LABELS["inference_step"])
                        fields["num_frames"] = gr.Slider(1, 64, step=1, value=start.num_frames,
                                                         label=LABELS["num_frames"])
                        fields["guidance_scale"] = gr.Slider(0, 20, step=0.5, value=start.guidance_scale,
                                                             label=LABELS["guidance_scale"])
                    with gr.Row():
                        fields["height"] = gr.Slider(64, 1024, step=8, value=start.height, label=LABELS["height"])
                        fields["width"] = gr.Slider(64, 1024, step=8, value=start.width, label=LABELS["width"])
                    with gr.Accordion("LoRA for the image model", open=False):
                        with gr.Row():
                            fields["lora"] = gr.Dropdown(loras, value=start.lora or NO_LORA, allow_custom_value=True,
                                                         label=LABELS["lora"],
                                                         info="A name from lora/, or a path to a .safetensors "
                                                              "file or a converted folder.")
                            fields["lora_scale"] = gr.Slider(0, 2, step=0.05, value=start.lora_scale or DEFAULT_SCALE,
                                                             label=LABELS["lora_scale"],
                                                             info="Strength of a .safetensors file; a converted "
                                                                  "folder keeps the strength it was merged at.")
                            fields["lora_target"] = gr.Radio(list(SETTINGS["lora_target"].choices),
                                                             value=start.lora_target, label=LABELS["lora_target"])
                    with gr.Accordion("Guide the video", open=False, elem_id="guide"):
                        gr.Markdown(f"- **{LABELS['init_video']}**: {guide_info('init_video')}\n"
                                    f"- **{LABELS['ip_adapter_image']}**: {guide_info('ip_adapter_image')}\n"
                                    f"- **{LABELS['controlnet']}**: {CONTROLNET_NOTE}\n"
                                    f"- **{LABELS['controlnet_video']}**: {guide_info('controlnet_video')}",
                                    elem_classes="preset-note")
                        with gr.Row():
                            fields["init_video"] = guide_file("init_video")
                            fields["strength"] = gr.Slider(0.05, 1, step=0.05, value=start_values["strength"],
                                                           label=LABELS["strength"], info=guide_info("strength"),
                                                           elem_id="guide-strength")
                        with gr.Row():
                            guide_model("ip_adapter", "ip_adapter_scale", start_values["ip_adapter"] or "",
                                        start_values["ip_adapter_scale"], TINY_IP_ADAPTER_NOTE, "h94/IP-Adapter")
                            fields["ip_adapter_image"] = guide_file("ip_adapter_image")
                        with gr.Row():
                            nets, scales = start_values["controlnet"], start_values["controlnet_scale"]
                            guide_model("controlnet", "controlnet_scale", nets[0] if nets else "",
                                        float(scales[0]) if scales else 1.0, TINY_CONTROLNET_NOTE,
                                        "lllyasviel/control_v11p_sd15_openpose")
                            fields["controlnet_video"] = guide_file("controlnet_video")
                        with gr.Row():
                            for name in ("control_guidance_start", "control_guidance_end"):
                                fields[name] = gr.Slider(0, 1, step=0.05, value=start_values[name],
                                                         label=LABELS[name], info=guide_info(name),
                                                         elem_id=f"guide-{name}")
                    with gr.Accordion("Models and sampler", open=False):
                        gr.Markdown("Blank fields use the pipeline's own. A model is a hub id, a folder or a single "
                                    ".safetensors file (Civitai style; its config comes from the config field or "
                                    "the pipeline's default model). Motion LoRAs: one per line, `ID_OR_FILE[:SCALE]`.")
                        with gr.Row():
                            for name in MODEL_FIELDS:
                                value = start_values[name]
                                if SETTINGS[name].choices:
                                    fields[name] = gr.Dropdown([PIPELINE_OWN, *SETTINGS[name].choices],
                                                               value=value or PIPELINE_OWN, label=LABELS[name],
                                                               info=SETTINGS[name].help, elem_id=f"model-{name}")
                                else:
                                    text = "\n".join(value) if isinstance(value, tuple) else (value or "")
                                    fields[name] = gr.Textbox(value=text, label=LABELS[name], info=SETTINGS[name].help,
                                                              lines=2 if name == "motion_lora" else 1,
                                                              elem_id=f"model-{name}")
                with gr.Column(scale=2):
                    with gr.Column(variant="panel", elem_id="iv-mixed-panel"):
                        gr.Markdown("### IV-mixed\nStarting points:")
                        with gr.Row():
                            preset_buttons = {name: gr.Button(name, size="sm", variant="secondary")
                                              for name in PRESETS}
                        gr.Markdown("\n".join(f"- **{n}**: {PRESET_NOTES[n]}" for n in PRESETS),
                                    elem_classes="preset-note")
                        with gr.Row():
                            fields["interval_begin"] = knob("interval_begin")
                            fields["interval_end"] = knob("interval_end")
                            fields["zz"] = knob("zz")
                        with gr.Row():
                            fields["i_sigma_begin"] = knob("i_sigma_begin")
                            fields["i_sigma_end"] = knob("i_sigma_end")
                        with gr.Row():
                            fields["v_sigma_begin"] = knob("v_sigma_begin")
                            fields["v_sigma_end"] = knob("v_sigma_end")
                        for name in IV_MIXED_KEYS:  # any knob not laid out above
                            if name not in fields:
                                fields[name] = knob(name)
                        fields["reference_compat"] = knob("reference_compat")
            with gr.Row():
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
            status = gr.Markdown(label="Status", elem_id="status")
            with gr.Row(elem_id="videos"):
                standard_video = gr.Video(label="Standard", elem_id="standard-video", interactive=False,
                                          autoplay=True, loop=True, height=VIDEO_HEIGHT)
                iv_video = gr.Video(label="IV-mixed", elem_id="ivmixed-video", interactive=False, autoplay=True,
                                    loop=True, height=VIDEO_HEIGHT)
            with gr.Row():
                with gr.Column(scale=1):
                    # the label as text above: Gradio's label badge would cover the sheet's caption
                    gr.Markdown("Contact sheet (standard above, IV-mixed below)")
                    sheet = gr.Image(show_label=False, type="filepath", interactive=False, elem_id="contact-sheet")
                with gr.Column(scale=1):
                    calls = gr.Dataframe(headers=CALLS_HEADERS, value=[], label="Guided network calls and time "
                                         "per video", interactive=False, type="array", elem_id="calls-table")
                    record_file = gr.File(label="Run record (JSON)", interactive=False, elem_id="record-file")

        with gr.Tab("History"):
            gr.Markdown(f"Every finished run in `{app.output_dir}` (from its `manifest.jsonl`), the command line's "
                        "too, newest first. Pick two to compare.")
            refresh_button = gr.Button("Refresh", size="sm")
            history_table = gr.Dataframe(headers=HISTORY_HEADERS, value=[], interactive=False, type="array",
                                         label="Runs", elem_id="history-table", max_height=360)
            with gr.Row():
                run_a = gr.Dropdown([], value=None, label="Run A", elem_id="history-a")
                run_b = gr.Dropdown([], value=None, label="Run B (compare with)", elem_id="history-b")
            with gr.Row():
                a_standard = gr.Video(label="A: Standard", interactive=False, loop=True, height=VIDEO_HEIGHT)
                a_iv = gr.Video(label="A: IV-mixed", interactive=False, loop=True, height=VIDEO_HEIGHT)
                b_iv = gr.Video(label="B: IV-mixed", interactive=False, loop=True, height=VIDEO_HEIGHT)
            differences = gr.Dataframe(headers=["Setting", "A", "B"], value=[], interactive=False, type="array",
                                       label="Where A and B differ")
            a_record = gr.JSON(label="A: record", max_height=360)

        inputs = [fields[name] for name in GENERATE_INPUTS]

        def generate(prompt, negative_prompt, pipeline, seed, inference_step, num_frames, height, width,
                     guidance_scale, interval_begin, interval_end, zz, i_sigma_begin, i_sigma_end, v_sigma_begin,
                     v_sigma_end, rho, reference_compat, lora, lora_scale, lora_target, video_model, motion_adapter,
                     unet, image_model, video_model_config, image_model_config, vae, motion_lora, scheduler,
                     timestep_spacing, beta_schedule, init_video=None, strength=None, ip_adapter=None,
                     ip_adapter_image=None, ip_adapter_scale=None, controlnet=None, controlnet_video=None,
                     controlnet_scale=None, control_guidance_start=None, control_guidance_end=None, random_seed=False,
                     request: gr.Request = None, progress=gr.Progress()):
            # the uploads' None defaults make them optional parameters for gradio_client (an empty upload has no
            # value to default to); gradio passes every input, so nothing else sees these defaults
            given = {name: value for name, value in locals().items() if name in GENERATE_INPUTS}
            labels = {"iv_mix": "IV-mixed video", "standard": "Standard video"}

            def on_step(kind: str, step: int, total: int) -> None:
                progress((step, total), desc=labels.get(kind, kind), unit="steps")

            progress(0, desc="Loading the models and planning")
            try:
                result = app.generate(given, random_seed=bool(random_seed),
                                      session=getattr(request, "session_hash", None), progress=on_step)
            except RequestError as exc:
                raise gr.Error(exc.message, title=exc.title, print_exception=False) from None
            f = result.files
            table = {"headers": calls_headers(result.calls), "data": result.calls}  # ControlNet columns as needed
            return (result.seed, f.get("standard"), f.get("iv_mix"), f.get("contact_sheet"), table,
                    result.record_path or None, result.status)

        # the endpoint's parameters are named after the settings (gradio_client calls them by these names)
        named = tuple(inspect.signature(generate).parameters)[: len(GENERATE_INPUTS)]
        if named != GENERATE_INPUTS:
            raise RuntimeError(f"the generate endpoint's parameters {named} do not match {GENERATE_INPUTS}")

        outputs = [fields["seed"], standard_video, iv_video, sheet, calls, record_file, status]
        event = generate_button.click(generate, inputs + [random_seed], outputs, api_name="generate",
                                      concurrency_limit="default", concurrency_id="generate",
                                      show_progress_on=[standard_video, iv_video])

        def stop(request: gr.Request = None):
            running = app.stop(getattr(request, "session_hash", None))
            return ("Stopped. Files already complete are kept; Generate with the same settings makes the rest."
                    if running else "Stopped; nothing was being made.")

        stop_button.click(stop, None, status, api_name="stop", concurrency_limit=None, cancels=[event])

        def apply_preset(name):
            def set_knobs(steps, init_video, strength):
                values = preset_values(name, knob_steps(steps, init_video, strength))
                end = values["interval_end"]
                values["interval_end"] = "" if end is None else str(end)  # a text field: empty = last step
                return [values[k] for k in PRESET_KEYS]
            return set_knobs

        PRESET_KEYS = tuple(PRESETS["Balanced"])
        for name, button in preset_buttons.items():
            button.click(apply_preset(name), [fields["inference_step"], fields["init_video"], fields["strength"]],
                         [fields[k] for k in PRESET_KEYS],
                         api_visibility="private", concurrency_limit=None)

        def on_pipeline(pipeline):
            try:
                d = app.pipeline_defaults(pipeline)
            except SettingError as exc:
                raise gr.Error(render_error(exc), print_exception=False) from None
            return d["height"], d["width"], d["guidance_scale"], d["zz"]

        fields["pipeline"].input(on_pipeline, fields["pipeline"],
                                 [fields["height"], fields["width"], fields["guidance_scale"], fields["zz"]],
                                 api_visibility="private", concurrency_limit=None)

        def refresh(run_a, run_b):
            a, b = run_a, run_b
            records = app.history()
            choices = [history_choice(r) for r in records]
            names = {value for _, value in choices}
            a = a if a in names else (choices[0][1] if choices else None)
            b = b if b in names else None
            return ([history_row(r) for r in records], gr.update(choices=choices, value=a),
                    gr.update(choices=choices, value=b))

        def show(run_a, run_b):
            newest_first = app.history() if run_a or run_b else []
            by_name = {r.get("files", {}).get("record"): r for r in reversed(newest_first)}  # the newest wins
            ra, rb = by_name.get(run_a) if run_a else None, by_name.get(run_b) if run_b else None
            pa, pb = app.paths(ra or {}), app.paths(rb or {})
            return (pa.get("standard"), pa.get("iv_mix"), pb.get("iv_mix"),
                    settings_difference(ra or {}, rb or {}), ra)

        history_outputs = [history_table, run_a, run_b]
        shown = [a_standard, a_iv, b_iv, differences, a_record]
        refresh_button.click(refresh, [run_a, run_b], history_outputs, api_name="history", concurrency_limit=None)
        event.then(refresh, [run_a, run_b], history_outputs, api_visibility="private", concurrency_limit=None)
        demo.load(refresh, [run_a, run_b], history_outputs, api_visibility="private", concurrency_limit=None)
        for picker in (run_a, run_b):
            picker.change(show, [run_a, run_b], shown, api_visibility="private", concurrency_limit=None)
    return demo
