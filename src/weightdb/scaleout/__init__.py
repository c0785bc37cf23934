"""Scale-out: placing models on workers by what they share, and batch inference over tables.

Nothing here imports Ray; ``weightdb.ray`` runs these pieces on a Ray cluster.
"""
