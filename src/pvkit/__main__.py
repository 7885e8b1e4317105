"""`python -m pvkit` runs the CLI."""

from pvkit.cli.app import main

main()
