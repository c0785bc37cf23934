"""Offline cache analysis: request traces and their replay under each policy, Belady included."""
