"""What a dedup run reports: bytes before and after, and every evaluated model's quality."""

from dataclasses import asdict, dataclass, field


@dataclass
class ModelReport:
    metric: str
    budget: float
    validation_before: float
    validation_after: float
    test_before: float
    test_after: float
    blocks_replaced: int


@dataclass
class DedupReport:
    method: str
    run_id: int | None  # None when nothing was committed
    stored_bytes_before: int
    stored_bytes_after: int
    distinct_blocks_before: int
    distinct_blocks_after: int
    exact_only: bool  # no eval spec covered any model: only lossless deduplication ran
    evaluations: int
    seconds: float
    models: dict[str, ModelReport] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def reduction(self) -> float:
        before = self.stored_bytes_before
        return 1.0 - self.stored_bytes_after / before if before else 0.0

    def to_json(self) -> dict:
        """The report as JSON-ready data (``weightdb dedup --json`` prints it)."""
        return {**asdict(self), "reduction": self.reduction}
