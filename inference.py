"""Command-line entry point: ``python inference.py --prompt "..." --pipeline Animatediff`` (see --help).

The same command line is installed as ``ivmixed`` by ``pip install .``.
"""

from ivmixed.entry import main

if __name__ == "__main__":
    raise SystemExit(main())
