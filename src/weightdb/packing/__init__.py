"""Page packing: place deduplicated blocks into pages so that each model reads few pages.

``pack(models, blocks_per_page)`` is the plain entry point; ``solve(instance, algorithm)``
returns the layout with the numbers that describe it. See ``layout`` for why blocks may be
copied, ``netsdb`` for the reference algorithms, ``dissolve`` for our default and
``optimal`` for the exact integer program.
"""

from weightdb.packing.instance import Instance, PackingError, load_instance
from weightdb.packing.layout import Layout, check_layout
from weightdb.packing.solve import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    DEFAULT_TIME_LIMIT,
    PackingResult,
    pack,
    solve,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "DEFAULT_TIME_LIMIT",
    "Instance",
    "Layout",
    "PackingError",
    "PackingResult",
    "check_layout",
    "load_instance",
    "pack",
    "solve",
]
