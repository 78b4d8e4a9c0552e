"""The ``ivmixed app`` command (also ``python -m ivmixed.app``): its options, starting the server, and stopping it
cleanly on a stop signal, after every generation has reached its next step, since the interpreter must not exit
while a generation's thread is inside torch.
"""

import argparse
import logging
import os
import signal
import sys
import threading
from typing import List, Optional

from ..config import SETTINGS, TINY_SIZES, load_yaml_config
from ..errors import SettingError
from ..flags import flag
from ..terminal import install_terminal
from .page import CSS, build_ui
from .state import App

logger = logging.getLogger("ivmixed")


def launch(app: App, host: str = "127.0.0.1", port: Optional[int] = None, share: bool = False,
           block: bool = True, quiet: bool = False):
    """Start the app's server; returns the ``gr.Blocks`` (serving in the background when ``block`` is false)."""
    demo = build_ui(app)
    demo.queue(default_concurrency_limit=1)
    os.makedirs(app.output_dir, exist_ok=True)
    demo.launch(server_name=host, server_port=port, share=share, allowed_paths=[app.output_dir],
                prevent_thread_lock=not block, ssr_mode=False, quiet=quiet, css=CSS, show_error=True,
                footer_links=["api", "settings"])
    return demo


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
STOP_GRACE_S = 60.0  # how long a stop signal waits for a running generation to reach its next step


def shut_down(app: App, demo, signum: int, prog: str, grace: float = STOP_GRACE_S) -> int:
    """Stop the server after stop signal ``signum``: every generation stops at its next step and is waited for,
    then the server closes; returns 128 + ``signum``. The interpreter must not exit while a generation's thread
    is inside torch: its C++ threads would abort the process."""
    name = signal.Signals(signum).name
    running = app.stop_all()
    if running:
        print(f"{prog}: {name}: stopping the generation at its next step (files already complete are kept)",
              file=sys.stderr, flush=True)
    if not app.wait_idle(grace):
        print(f"{prog}: {name}: the generation did not stop within {grace:g} s; stopped at once (files already "
              "complete are kept)", file=sys.stderr, flush=True)
        os._exit(128 + signum)
    demo.close(verbose=False)
    print(f"{prog}: {name}: server stopped", file=sys.stderr, flush=True)
    return 128 + signum


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ivmixed app",
        description="A local web app for IV-mixed sampling: the standard and IV-mixed videos of one seed side by "
        "side, every knob, and the history of the output folder (shared with the command line).",
    )
    p.add_argument("--tiny", action="store_true", help="random tiny models, offline, in seconds (the videos are noise)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860, or the next free one)")
    p.add_argument("--output-dir", default=None,
                   help="where videos, records and the manifest go (default: the config file's, else outputs)")
    p.add_argument("--config", default=None,
                   help="YAML file of settings under the page's values (checkpoints, device, dtype, offload, ...)")
    p.add_argument("--share", action="store_true", help="also open a public share link (off by default)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Start the app (``python -m ivmixed.app`` or ``ivmixed app``); returns the exit status."""
    install_terminal()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config_file = load_yaml_config(args.config) if args.config else {}
        output_dir = args.output_dir or config_file.get("output_dir") or SETTINGS["output_dir"].default
        app = App(output_dir=output_dir, tiny=args.tiny, config_file=config_file, config_path=args.config)
        app.defaults()  # a config file no run could use is refused now, not at the first Generate
    except SettingError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc.render(flag)}\n")
    try:
        import gradio  # noqa: F401
    except ImportError:
        parser.exit(1, f"{parser.prog}: error: the web app needs gradio: pip install gradio\n")
    if args.tiny:
        sizes = ", ".join(f"{k} {v}" for k, v in TINY_SIZES.items())
        logger.warning("--tiny: random tiny models (%s); the videos are noise and only check the install", sizes)
    received: List[int] = []
    woken = threading.Event()

    def on_signal(signum, frame):
        if received:  # a second signal: the user will not wait for the run to reach its next step
            print(f"{parser.prog}: stopped at once; files already complete are kept", file=sys.stderr, flush=True)
            os._exit(128 + received[0])
        received.append(signum)
        woken.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        demo = launch(app, host=args.host, port=args.port, share=args.share, block=False, quiet=True)
        share = f" and {demo.share_url}" if getattr(demo, "share_url", None) else ""
        print(f"{parser.prog}: serving on {demo.local_url}{share}; outputs in {app.output_dir}; Ctrl-C stops",
              file=sys.stderr, flush=True)
        while demo.is_running and not woken.wait(0.2):
            pass
        if not received:  # closed from elsewhere
            return 0
        return shut_down(app, demo, received[0], parser.prog)
    except KeyboardInterrupt:  # before the handlers were in place
        return 128 + signal.SIGINT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
