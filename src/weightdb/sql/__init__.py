"""SQL over features and models: DuckDB with weightdb's functions and catalog tables."""
