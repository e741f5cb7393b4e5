"""`python -m decortask ...` is the `decortask` command."""

from .cli import main

main()
