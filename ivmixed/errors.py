"""Errors the library raises about settings, in Python terms; the CLI spells the setting names as flags."""

from __future__ import annotations

import re
import reprlib
from typing import Callable, Optional

_NAME = re.compile(r"\{([a-z][a-z0-9_]*)\}")


def spell_names(template: str, spell: Callable[[str], str] = str) -> str:
    """``template`` with every ``{name}`` of a setting written as ``spell(name)`` (a flag, on the command line)."""
    return _NAME.sub(lambda m: spell(m.group(1)), template)


class Templated:
    """A message template in which ``{name}`` marks a setting's name, so that the library says
    ``interval_end must be ...`` and the command line ``--interval-end must be ...`` from one text."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.render())

    def render(self, spell: Callable[[str], str] = str) -> str:
        """The message with every ``{name}`` written as ``spell(name)``."""
        return spell_names(self.template, spell)


class SettingError(Templated, ValueError):
    """A setting value no run could honour (found before any model loads)."""


class ModelLoadError(Templated, RuntimeError):
    """A checkpoint could not be loaded; the message says which one and how to get it."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxset = 2, 4, 4, 4, 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40


def quote(value, limit: int = 80) -> str:
    """``repr(value)`` for a message, at most ``limit`` characters and safe in a :class:`SettingError` template
    (braces become parentheses, so they are not names); only as much of ``value`` is looked at as is shown, so a
    YAML alias bomb, a 50 MB string or a huge number cannot make a message hang or flood the terminal."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        text = f"a number of {value.bit_length():,} bits"  # repr of a 5,000-digit int raises ValueError
    else:
        try:
            text = _SHORT.repr(value)
        except Exception:  # a value whose repr fails (a huge int inside a list)
            text = f"a {type(value).__name__}"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("{", "(").replace("}", ")")


def quote_message(message: str, limit: Optional[int] = 200) -> str:
    """Another library's message (or any text, a path) cut to ``limit`` characters (``None``: whole), to embed in a
    template (braces become parentheses, as :func:`quote` does)."""
    message = message if limit is None or len(message) <= limit else message[: limit - 3] + "..."
    return message.replace("{", "(").replace("}", ")")

