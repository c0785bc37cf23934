"""Storage layer: catalog, page format and files, buffer pool and replacement policies."""
