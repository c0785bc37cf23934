"""Serving: prepared models over the database, SQL functions, and (later) the HTTP server."""
