"""`make run`: the whole platform in the foreground, with prefixed logs.

Embedded Postgres (unless DATABASE_URL is set) and Redis (unless REDIS_URL is set), the three
services with migrations on, and Envoy on $ICEOS_EDGE_PORT (8080). Writes $ICEOS_HOME/stack.env.
Ctrl-C or SIGTERM stops every child; a second run reuses the data in $ICEOS_HOME/pgdata.
"""

from __future__ import annotations

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
