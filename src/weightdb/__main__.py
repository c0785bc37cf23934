"""`python -m weightdb` runs the CLI."""

from weightdb.cli import main

main()
