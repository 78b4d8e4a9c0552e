"""Errors the library raises about settings, in Python terms; the CLI spells the setting names as flags."""

from __future__ import annotations

import re
from typing import Callable

_NAME = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class Templated:
    """A message template in which ``{name}`` marks a setting's name, so that the library says
    ``interval_end must be ...`` and the command line ``--interval-end must be ...`` from one text."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.render())

    def render(self, spell: Callable[[str], str] = str) -> str:
        """The message with every ``{name}`` written as ``spell(name)``."""
        return _NAME.sub(lambda m: spell(m.group(1)), self.template)


class SettingError(Templated, ValueError):
    """A setting value no run could honour (found before any model loads)."""


class ModelLoadError(Templated, RuntimeError):
    """A checkpoint could not be loaded; the message says which one and how to get it."""


def quote(value) -> str:
    """``repr(value)`` safe to embed in a :class:`SettingError` template (braces doubled are not names)."""
    return repr(value).replace("{", "(").replace("}", ")")
