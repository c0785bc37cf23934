"""One training loop for every torch family: seeded batches, frozen prefixes, cross-entropy.

Adam without weight decay is used throughout, so a parameter row that never gets a gradient (an
embedding row no training text uses) stays bit-identical to where it started, as in real
fine-tunes with sparse updates. Parameters whose gradient is sparse get SparseAdam.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch.nn import functional

from weightdb.zoo.progress import Reporter


@dataclass(frozen=True)
class TrainConfig:
    """How long and how fast one model is trained."""

    steps: int
    batch_size: int
    learning_rate: float
    seed: int


def freeze(module: torch.nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Stop gradients for parameters whose name starts with a prefix; return the prefixes used."""
    prefixes = list(prefixes)
    for name, parameter in module.named_parameters():
        if any(name == p or name.startswith(f"{p}.") for p in prefixes):
            parameter.requires_grad_(False)
    return prefixes


def _optimizers(
    module: torch.nn.Module, lr: float, sparse: set[str]
) -> list[torch.optim.Optimizer]:
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    dense = [p for n, p in trainable if n not in sparse]
    sparse_params = [p for n, p in trainable if n in sparse]
    optimizers: list[torch.optim.Optimizer] = []
    if dense:
        optimizers.append(torch.optim.Adam(dense, lr=lr))
    if sparse_params:
        optimizers.append(torch.optim.SparseAdam(sparse_params, lr=lr))
    return optimizers


def train(
    module: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    config: TrainConfig,
    reporter: Reporter,
    label: str,
    sparse_parameters: Iterable[str] = (),
) -> None:
    """Minimise cross-entropy for ``config.steps`` steps over shuffled passes of the data."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout masks
    optimizers = _optimizers(module, config.learning_rate, set(sparse_parameters))
    module.train()
    order = torch.empty(0, dtype=torch.long)
    for _ in reporter.track(range(config.steps), config.steps, label):
        if len(order) < config.batch_size:
            order = torch.cat([order, torch.randperm(len(labels), generator=generator)])
        batch, order = order[: config.batch_size], order[config.batch_size :]
        loss = functional.cross_entropy(
            module(*(tensor[batch] for tensor in inputs.values())), labels[batch]
        )
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
    module.eval()
