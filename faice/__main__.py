"""``python -m faice``."""

from faice.cli import main

raise SystemExit(main())
