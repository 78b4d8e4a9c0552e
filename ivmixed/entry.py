"""The ``ivmixed`` command and ``inference.py``: pick the command a first word names, else the generation command
line, answering Ctrl-C during start-up too. No command module knows another: this table is where they meet."""

import sys
from typing import List, Optional

# ivmixed <word> [options]: the module whose main(argv) runs it
SUBCOMMANDS = {"app": "ivmixed.app"}
GENERATE = "ivmixed.cli"


def main(argv: Optional[List[str]] = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    sub = words[0] if words and words[0] in SUBCOMMANDS else None
    try:
        command = __import__(SUBCOMMANDS[sub] if sub else GENERATE, fromlist=["main"])
    except KeyboardInterrupt:
        print("interrupted while starting; nothing was made", file=sys.stderr)
        return 130
    return command.main(words[1:]) if sub else command.main(argv)
