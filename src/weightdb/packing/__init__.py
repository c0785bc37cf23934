"""Page packing: place deduplicated blocks into pages so that each model reads few pages."""
