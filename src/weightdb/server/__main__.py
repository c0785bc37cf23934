"""``python -m weightdb.server --db PATH serve ...`` runs the server without the full CLI."""

from weightdb.server.cli import main

main()
