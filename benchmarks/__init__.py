"""Benchmarks: each module has run(quick, out_dir) -> dict."""
