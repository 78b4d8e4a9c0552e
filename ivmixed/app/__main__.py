"""``python -m ivmixed.app``: run the app's command and exit with its status, the same as ``ivmixed app``."""

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())
