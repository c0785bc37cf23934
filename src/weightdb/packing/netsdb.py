"""The four page-packing algorithms of the netsDB artifact, for any number of models.

They follow ``model-inference/deduplication/page-packing/algorithms/PagePacking.py`` of the
netsDB repository (``bin_pack_base``, ``exp_greedy1``, ``bin_pack_greedy`` and the
``*_twostage`` functions), with two changes that do not alter what they compute: blocks are
grouped by signature with one hash pass instead of enumerating all 2^m subsets of models, and
the two-stage split is written once for any number of models instead of once per model count.

Like the artifact, Baseline, Greedy-2 and Two-Stage copy a shared block into a new page when
the page that already holds it also holds blocks a later model does not use; and a later model
reuses only *full* pages whose blocks it all uses.
"""

from collections.abc import Iterable, Mapping, Sequence

from weightdb.packing.instance import Instance, Signature
from weightdb.packing.layout import chunk


def baseline(instance: Instance) -> list[list[int]]:
    """Models in arrival order; the first model's blocks in the order it lists them."""
    order = list(instance.models)
    if not order:
        return []
    return _pack_in_model_order(instance, order, instance.models[order[0]])


def greedy1(instance: Instance) -> list[list[int]]:
    """Each signature group on pages of its own: no copies, some half-empty pages."""
    groups = instance.signature_groups()
    return [
        page
        for signature in sorted(groups, key=len, reverse=True)
        for page in chunk(groups[signature], instance.blocks_per_page)
    ]


def greedy2(instance: Instance) -> list[list[int]]:
    """Largest model first, its most shared blocks first; later models reuse full pages."""
    order = sorted(instance.models, key=lambda model: len(instance.models[model]), reverse=True)
    if not order:
        return []
    signatures = instance.signatures()
    return _pack_in_model_order(
        instance, order, _most_shared_first(instance.models[order[0]], signatures)
    )


def two_stage(instance: Instance) -> list[list[int]]:
    """Full pages per signature group, then Greedy-2 over the blocks left over."""
    capacity = instance.blocks_per_page
    full_pages: list[list[int]] = []
    left_over: set[int] = set()
    for blocks in instance.signature_groups().values():
        whole = len(blocks) - len(blocks) % capacity
        full_pages += chunk(blocks[:whole], capacity)
        left_over.update(blocks[whole:])
    rest = {
        model: [block for block in blocks if block in left_over]
        for model, blocks in instance.models.items()
    }
    rest = {model: blocks for model, blocks in rest.items() if blocks}
    if not rest:
        return full_pages
    return full_pages + greedy2(Instance.from_models(rest, capacity))


def _pack_in_model_order(
    instance: Instance, order: Sequence[str], first_blocks: Sequence[int]
) -> list[list[int]]:
    """The loop Baseline and Greedy-2 share (the artifact's ``findMinBinsMaxCover`` reuse).

    The first model fills new pages with ``first_blocks``. Each later model reuses the full
    pages all of whose blocks it uses (never two pages holding the same block), and its other
    blocks, most shared first, go to new pages, copied if they are already stored elsewhere.
    """
    capacity = instance.blocks_per_page
    signatures = instance.signatures()
    pages = chunk(first_blocks, capacity)
    for model in order[1:]:
        blocks = set(instance.models[model])
        covered: set[int] = set()
        for page in pages:
            if len(page) == capacity and blocks.issuperset(page) and covered.isdisjoint(page):
                covered.update(page)
        rest = [block for block in instance.models[model] if block not in covered]
        pages += chunk(_most_shared_first(rest, signatures), capacity)
    return pages


def _most_shared_first(blocks: Iterable[int], signatures: Mapping[int, Signature]) -> list[int]:
    """The artifact's ``order_tensor_blocks_by_freq``: by number of users, stable otherwise."""
    return sorted(blocks, key=lambda block: len(signatures[block]), reverse=True)
