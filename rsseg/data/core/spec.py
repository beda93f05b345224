"""What a dataset declares about itself: classes, colours and its metric convention."""

from __future__ import annotations

from dataclasses import dataclass, field

IGNORE_INDEX = 255


@dataclass(frozen=True)
class DatasetSpec:
    """Label convention and evaluation protocol of one dataset.

    The metric convention is data, not code: ``exclude_from_mean`` lists class indices that are
    trained and counted in OA but left out of mIoU/mF1 (ISPRS clutter under the UNetFormer protocol),
    and ``eroded_test_labels`` says whether test labels have their boundaries removed.
    """

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB, one colour per class
    protocol: str
    ignore_index: int = IGNORE_INDEX
    exclude_from_mean: tuple[int, ...] = ()
    eroded_test_labels: bool = False
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
