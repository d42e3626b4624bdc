from __future__ import annotations

from kai_launch.main import main

raise SystemExit(main())
