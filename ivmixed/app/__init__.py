"""The web app: explore frame quality against temporal coherence in a browser (``python -m ivmixed.app``).

Every generation goes through :class:`~ivmixed.runner.Runner`, like the command line, so the app and the CLI share
one output folder and history. :class:`App` (in :mod:`.state`) holds everything but the page and is used without
a browser; :mod:`.page` lays out the page over it, :mod:`.command` serves it. Importing this package does not
import gradio: only building a page does.
"""

from .command import build_parser, launch, main
from .fields import PRESETS, knob_info, preset_values
from .page import GENERATE_INPUTS, build_ui
from .state import App, RequestError, Result

__all__ = ["App", "GENERATE_INPUTS", "PRESETS", "RequestError", "Result", "build_parser", "build_ui", "knob_info",
           "launch", "main", "preset_values"]
