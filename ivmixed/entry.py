"""The ``ivmixed`` command and ``inference.py``: start the command line, answering Ctrl-C during start-up too."""

import sys


def main() -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted while starting; nothing was made", file=sys.stderr)
        return 130
    return cli_main()
