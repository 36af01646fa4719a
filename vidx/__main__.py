"""`python -m vidx`: the same as the `vidx` command."""

from vidx.cli import main

main()
