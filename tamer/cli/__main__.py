"""``python -m tamer.cli`` (what ``torchrun -m tamer.cli`` runs)."""

from tamer.cli.commands import main

raise SystemExit(main())
