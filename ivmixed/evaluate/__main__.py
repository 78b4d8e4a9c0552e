"""``python -m ivmixed.evaluate OUTPUT_DIR``."""

from .command import main

raise SystemExit(main())
