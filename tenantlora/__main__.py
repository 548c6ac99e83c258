"""``python -m tenantlora``: the ``tenantlora`` command."""

from __future__ import annotations

from tenantlora.cli import main

raise SystemExit(main())
