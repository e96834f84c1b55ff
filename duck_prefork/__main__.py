"""`python -m duck_prefork` is the `duck-prefork` command."""

from .cli import main

main()
