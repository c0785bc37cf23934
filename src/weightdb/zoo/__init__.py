"""Model zoo: reproducible, offline model families with lineage, data splits and accuracy."""
