"""Command-line entry point: ``python inference.py --prompt "..." --pipeline Animatediff`` (see --help)."""

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from ivmixed.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
