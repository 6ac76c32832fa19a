"""``python -m vlaforge ...``: the same as the ``vlaforge`` console script."""

from vlaforge.cli.main import main

raise SystemExit(main())
