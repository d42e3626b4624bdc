"""kai-run: run Kai (or any command) under a named network profile."""

from __future__ import annotations

__version__ = "0.1.0"
