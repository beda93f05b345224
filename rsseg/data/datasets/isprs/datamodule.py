"""Loading a prepared ISPRS root (Potsdam, Vaihingen): its patches, normalised per band as prepared.

The bands a root was prepared with (``RGB``, ``IRRG``, ``RGBIR``) are in its manifest; the datamodule
knows its bands from ``__init__`` (so a CLI can link ``data.in_channels`` to the model) and refuses a
root prepared with others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from rsseg.data.core.errors import DataError
from rsseg.data.core.prepared import PreparedPatchDataset, PreparedRootDataModule, open_prepared_root
from rsseg.data.datasets.isprs.labels import BANDS, band_statistics, check_bands


class IsprsPatchDataset(PreparedPatchDataset):
    """A split of a prepared ISPRS root, normalised per band as its manifest's ``bands`` says."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: Any = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        manifest: dict[str, Any] | None = None,
        mosaic_ratio: float = 0.0,
    ) -> None:
        manifest = manifest or open_prepared_root(root, self.dataset_name, self.display_name)
        band_mean, band_std = band_statistics(manifest["parameters"].get("bands", "RGB"))
        super().__init__(root, split, transform, mean or band_mean, std or band_std, manifest, mosaic_ratio)


class IsprsDataModule(PreparedRootDataModule):
    """A prepared ISPRS root for fit/validate/test/predict, with the image bands it was prepared with.

    ``in_channels`` (3 or 4), ``mean`` and ``std`` follow ``bands`` and are known right after
    ``__init__`` (so a CLI can link ``data.in_channels`` to the model); ``setup`` checks that the root
    was prepared with the same bands, as it checks the protocol.
    """

    allowed_bands: ClassVar[tuple[str, ...]] = tuple(BANDS)
    default_bands: ClassVar[str] = "RGB"

    def __init__(self, root: str, bands: str | None = None, **kwargs: Any) -> None:
        """``bands`` (default: the dataset's) must match the prepared root; others: ``PreparedRootDataModule``."""
        self.bands = check_bands(bands or self.default_bands, self.allowed_bands)
        super().__init__(root, **kwargs)
        self.in_channels: int = len(BANDS[self.bands])
        self.mean, self.std = band_statistics(self.bands)

    def load_manifest(self) -> dict[str, Any]:
        manifest = super().load_manifest()
        prepared = manifest["parameters"].get("bands")
        if prepared != self.bands:
            raise DataError(
                f"{self.root}: prepared with bands {prepared!r} but bands {self.bands!r} were requested; "
                f"prepare another root with --bands {self.bands} or request bands={prepared!r}"
            )
        return manifest
