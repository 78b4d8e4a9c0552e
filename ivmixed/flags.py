"""How every command spells settings as flags, and the one argparse error format they share.

Each setting's flag is its name with dashes (``--inference-step``); the spelling with underscores
(``--inference_step``, as the published tool had it) works too, and so do the aliases a setting declares
(``--num-inference-steps``, diffusers' name). Errors show the short usage line and one ``prog: error:`` line; a
mistyped flag is answered with the closest ones.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Dict, List

from .config import SETTINGS

CLI_ONLY = ("config", "debug", "verbose", "sweep", "max_cells")


def flag(name: str) -> str:
    """The flag of setting ``name`` as messages spell it."""
    if name in SETTINGS or name in CLI_ONLY:
        return "--" + name.replace("_", "-")
    return name


def spellings(name: str) -> List[str]:
    """Every flag of setting ``name``: its own and its aliases', each with dashes and with underscores."""
    out: List[str] = []
    for word in (name, *SETTINGS[name].aliases):
        out += ["--" + word.replace("_", "-")] + (["--" + word] if "_" in word else [])
    return out


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


class Parser(argparse.ArgumentParser):
    """argparse whose errors show the short usage line (give ``usage``) and the error; ``--help`` lists the rest."""

    def error(self, message: str):
        self.exit(2, f"{self.format_usage().rstrip()}  (--help lists them)\n{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized(extras))
        return namespace

    def suggestions(self, word: str) -> List[str]:
        """The flags closest to a mistyped ``word``: the one it spells with a wrong dash, else those it begins,
        then difflib's nearest; each flag once, by its first long spelling (an alias suggests its setting's flag)."""
        main: Dict[str, str] = {}  # name without dashes, underscores as dashes -> the flag to suggest
        for action in self._actions:
            long = [o for o in action.option_strings if o.startswith("--")]
            for option in long:
                main.setdefault(option[2:].replace("_", "-"), long[0])
        typed = word.split("=", 1)[0].lstrip("-").replace("_", "-")
        if typed in main:  # -prompt, ---seed
            return [main[typed]]
        near = [o for o in main if len(typed) >= 3 and o.startswith(typed)]
        near += difflib.get_close_matches(typed, list(main), n=3, cutoff=0.75)
        out: List[str] = []
        for option in near:
            if main[option] not in out:
                out.append(main[option])
        return out[:3]

    def unrecognized(self, extras: List[str]) -> str:
        """One line for words no flag took: the unknown flags with the nearest real ones, else the stray values."""
        flags = [w for w in extras if w.startswith("-") and not _is_number(w)]
        if not flags:
            words = ", ".join(repr(w) for w in extras)
            return (f"unrecognized argument{'s' if len(extras) > 1 else ''} {words}; a value goes right after its "
                    "flag, in quotes when it has spaces (--prompt \"a red car\")")
        hints = [(w.split("=", 1)[0], self.suggestions(w)) for w in flags]
        if len(hints) == 1:
            word, near = hints[0]
            return f"unrecognized argument {word}" + (f"; did you mean {' or '.join(near)}?" if near else "")
        return "unrecognized arguments " + ", ".join(
            word + (f" (did you mean {' or '.join(near)}?)" if near else "") for word, near in hints)


__all__ = ["CLI_ONLY", "Parser", "flag", "spellings"]
