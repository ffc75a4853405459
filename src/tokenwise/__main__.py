"""`python -m tokenwise` runs the `tokenwise` command."""

from tokenwise.cli.main import main

main()
