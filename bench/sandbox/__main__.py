"""`python -m bench.sandbox` (make bench-sandbox)."""

from . import main

main()
