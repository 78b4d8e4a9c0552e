"""The command line (``ivmixed`` or ``python inference.py``): flags to a :class:`~ivmixed.config.RunConfig`, a run,
and every failure as one line.

The flags derive from the settings, spelled as :mod:`ivmixed.flags` says (with dashes, with underscores, and the
aliases a setting declares); a mistyped flag is answered with the closest ones.
Exit status: 0 done, 1 a failure while running, 2 a bad flag, value or file (found before any model loads),
128 + N for signal N (130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any, Dict, List, Optional

from .config import SETTINGS, TINY_SIZES, build_config_with_layers, describe_tiny, load_yaml_config
from .errors import SettingError, spell_names
from .failures import describe_failure
from .flags import CLI_ONLY, Parser, flag, spellings
from .registry import PIPELINES
from .stopping import StopSignals
from .terminal import install_terminal

logger = logging.getLogger("ivmixed")

GROUPS = ("what to generate", "IV-mixed sampling (quality vs temporal coherence)", "guiding the video (input files)",
          "models", "output and run", "speed and memory")


def prog_name() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ivmixed"
    return "inference.py" if name == "inference.py" else "ivmixed"


def _defaults_epilog() -> str:
    lines = ["pipeline defaults:"]
    for spec in PIPELINES.values():
        values = ", ".join(f"{k} {v}" for k, v in spec.defaults.items())
        models = ", ".join(f"{flag(c.key)} {c.default}" for c in spec.checkpoints)
        lines.append(f"  {spec.name}: {values}; {models}")
    lines.append("  --tiny: " + ", ".join(f"{k} {v}" for k, v in TINY_SIZES.items()) + " (over a --config file's)")
    lines.append("precedence: defaults < pipeline defaults < --config file < --tiny sizes < flags on the command line")
    return "\n".join(lines)


def _help(name: str) -> str:
    s = SETTINGS[name]
    text = spell_names(s.help, flag).replace("%", "%%")
    if s.type is not bool and s.default is not None and "default" not in text:
        text += f" (default {s.default})"
    return text


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """Flags derive from the settings; every default is ``None`` so that presets and config files apply."""
    p = Parser(
        prog=prog or prog_name(),
        usage="%(prog)s --prompt TEXT [--pipeline NAME] [options]   (or --prompt-file FILE)",
        description="Text-to-video with IV-mixed sampling: an image diffusion model lifts the quality of every "
        "frame of a video diffusion model. Also writes the standard video of the same seed for comparison.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_defaults_epilog(),
        allow_abbrev=False,
    )
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for name, s in SETTINGS.items():
        kwargs: Dict[str, Any] = {"dest": name, "help": _help(name), "default": None}
        if s.type is bool:
            kwargs["action"] = "store_true"
        elif s.type is tuple:  # repeatable: each flag adds one value
            kwargs.update(action="append", type=str, metavar=s.metavar or name.upper())
        else:
            kwargs["type"] = s.type
            kwargs["metavar"] = s.metavar or ("{" + ",".join(s.choices) + "}" if s.choices else name.upper())
        groups[s.group].add_argument(*spellings(name), **kwargs)
    run = groups["output and run"]
    run.add_argument("--config", help="YAML file of settings (see configs/); flags given here override it")
    run.add_argument("--debug", action="store_true", help="show full tracebacks")
    run.add_argument("--verbose", action="store_true", help="show the libraries' own messages and loading bars")
    sweep = p.add_argument_group("settings sweep (X/Y grid; see ivmixed.sweep)")
    sweep.add_argument("--sweep", action="append", metavar="KEY=V1,V2,...",
                       help="make one video per value of an IV-mixed setting, guidance_scale or inference_step, from "
                       "the same seed; repeat for a grid (the first across, the others down); writes a grid video "
                       "and PNG per prompt beside one shared baseline (standard) video")
    sweep.add_argument("--max-cells", "--max_cells", dest="max_cells", type=int, metavar="N",
                       help="allow a sweep of up to N cells (without it, at most 64)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    install_terminal()
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
    signals = StopSignals()
    try:
        config_file = load_yaml_config(args.config) if args.config else {}
        config, layers = build_config_with_layers(given, config_file)
        from .runner import Runner

        command_line = [parser.prog, *(sys.argv[1:] if argv is None else argv)]
        if args.sweep or args.max_cells is not None:
            from .sweep import Sweep, parse_sweep

            if not args.sweep:
                raise SettingError("{max_cells} applies to a {sweep} only")
            runner = Sweep(config, parse_sweep(args.sweep), max_cells=args.max_cells, command_line=command_line,
                           should_stop=signals.received)
        else:
            runner = Runner(config, command_line=command_line, should_stop=signals.received)
        unit = "cell video(s)" if args.sweep else "prompt(s)"
        if config.tiny:
            logger.warning("--tiny: random tiny models at %s; the videos are noise and only check the install",
                           describe_tiny(layers, config))
        for warning in layers.warnings:  # values given that this run leaves unused
            logger.warning("%s: warning: %s", parser.prog, warning.render(flag))
    except SettingError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc.render(flag)}\n")
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted before anything was made", file=sys.stderr)
        return 130
    from .runtime import set_verbose

    set_verbose(args.verbose)
    with signals:
        try:
            report = runner.run()
            if signals.received():  # the signal's exception was swallowed after the last step
                raise KeyboardInterrupt
        except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP
            print(f"{parser.prog}: interrupted after {len(runner.report.made)} finished {unit} in this run; every "
                  "file written is complete; run the same command again to make the rest", file=sys.stderr)
            return 128 + (getattr(exc, "signum", None) or signals.signum or signal.SIGINT)
        except Exception as exc:  # one line for the user; the traceback with --debug
            if args.debug:
                raise
            status, message = describe_failure(exc)
            print(f"{parser.prog}: error: {message}", file=sys.stderr)
            return status
    logger.info("done: %d %s made in this run, %d already finished, in %s", len(report.made), unit, report.skipped,
                runner.config.output_dir)
    return 0


__all__ = ["build_parser", "main"]
