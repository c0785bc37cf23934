"""The `weightdb` command line: one package, one vocabulary (see README's command table).

Nothing below this package imports from it; the entry point is ``weightdb.cli:main``.
"""

from weightdb.cli.main import app, main

__all__ = ["app", "main"]
