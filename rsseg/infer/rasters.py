"""Reading scenes window by window and writing label rasters (GeoTIFF with a colour table, or palette PNG).

rasterio (GDAL) reads every format it knows, GeoTIFF first; a scene with a CRS or a non-identity transform is
georeferenced and its labels are written as a GeoTIFF on the same grid, anything else (PNG, JPEG) as a PNG.
Outputs are written under a temporary name and renamed when complete, so a failed scene leaves nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rsseg.data.core.errors import DataError

NODATA = 255  # the ignore index: never a class (at most 255 classes are written)
PREVIEW_MAX_SIDE = 2048


def rasterio_module():
    """rasterio, or an error naming the extra that installs it."""
    from rsseg.extras import require

    return require("rasterio", "geo", "rsseg infer (reading and writing GeoTIFFs)")


class Scene:
    """One input raster, open for windowed reads of the bands the model takes, scaled and standardised as the
    datamodule fed them in training (``input_spec``: ``(x / value_scale - mean) / std`` in float32)."""

    def __init__(self, path: Path, input_spec: dict[str, Any], bands: Sequence[int] | None = None,
                 value_scale: float | None = None) -> None:
        rasterio = rasterio_module()
        self.path = path
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                self.source = rasterio.open(path)
        except rasterio.errors.RasterioIOError as error:
            raise DataError(f"{path}: not a readable image ({error})") from None
        try:
            self._check(input_spec, bands, value_scale)
        except Exception:
            self.source.close()
            raise

    def _check(self, spec: dict[str, Any], bands: Sequence[int] | None, value_scale: float | None) -> None:
        source, expected = self.source, int(spec["in_channels"])
        self.bands = list(bands) if bands else list(range(1, source.count + 1))
        if any(b < 1 or b > source.count for b in self.bands):
            raise DataError(f"{self.path}: --bands {','.join(map(str, self.bands))} asks for bands it does not have "
                            f"(it has {source.count})")
        if len(self.bands) != expected:
            raise DataError(f"{self.path}: {len(self.bands)} bands, but the model was trained on {expected} "
                            f"({spec.get('bands') or 'bands'} of {spec['dataset']}); choose them with --bands, e.g. "
                            f"--bands {','.join(map(str, range(1, expected + 1)))}")
        dtype = source.dtypes[self.bands[0] - 1]
        if value_scale is None:
            if dtype != spec["dtype"]:
                raise DataError(f"{self.path}: {dtype} pixels, but the model was trained on {spec['dtype']} imagery "
                                f"scaled by 1/{spec['value_scale']:g}; pass --value-scale N, the raw value that "
                                "stands for full brightness (e.g. 65535 for full-range 16-bit, 4095 for 12-bit)")
            value_scale = float(spec["value_scale"])
        if value_scale <= 0:
            raise ValueError(f"--value-scale must be positive, got {value_scale}")
        self.value_scale = value_scale
        self.mean = np.asarray(spec["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(spec["std"], dtype=np.float32).reshape(-1, 1, 1)

    @property
    def height(self) -> int:
        return self.source.height

    @property
    def width(self) -> int:
        return self.source.width

    @property
    def georeferenced(self) -> bool:
        return self.source.crs is not None or not self.source.transform.is_identity

    def read_rows(self, row: int, rows: int):
        """Rows ``row``…``row + rows`` of the chosen bands, normalised: float32 C×rows×W (a torch tensor)."""
        import torch

        rasterio = rasterio_module()
        window = rasterio.windows.Window(0, row, self.width, rows)
        try:
            raw = self.source.read(self.bands, window=window)
        except rasterio.errors.RasterioIOError as error:
            raise DataError(f"{self.path}: rows {row}–{row + rows} cannot be read ({error})") from None
        pixels = torch.from_numpy(raw.astype(np.float32)).div_(self.value_scale)
        return pixels.sub_(torch.from_numpy(self.mean)).div_(torch.from_numpy(self.std))

    def nodata_rows(self, row: int, rows: int) -> np.ndarray | None:
        """Where the scene has no data in these rows (every chosen band masked: its nodata value or its mask),
        or None when it declares no nodata at all."""
        rasterio = rasterio_module()
        all_valid = [rasterio.enums.MaskFlags.all_valid]
        if all(self.source.mask_flag_enums[b - 1] == all_valid for b in self.bands):
            return None
        masks = self.source.read_masks(self.bands, window=rasterio.windows.Window(0, row, self.width, rows))
        return (masks == 0).all(axis=0)

    def close(self) -> None:
        self.source.close()


def palette_bytes(palette: Sequence[Sequence[int]]) -> list[int]:
    """A PIL palette: the classes' colours, black for the rest (the nodata index included)."""
    flat = [int(c) for colour in palette for c in colour[:3]]
    return flat + [0] * (768 - len(flat))


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name next to ``path`` that replaces it only when the block ends without an error."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


class LabelGeoTiff:
    """A uint8 GeoTIFF on a scene's grid (``crs``, ``transform``), written by rows: one band of classes with their
    colour table and ``NODATA`` where the scene has no data, or (``bands`` > 1) one band per class."""

    def __init__(self, path: Path, size: tuple[int, int], crs: Any, transform: Any,
                 palette: Sequence[Sequence[int]], classes: Sequence[str], bands: int = 1) -> None:
        rasterio = rasterio_module()
        height, width = size
        profile = {
            "driver": "GTiff", "width": width, "height": height, "count": bands, "dtype": "uint8", "crs": crs,
            "transform": transform, "compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256,
            "BIGTIFF": "IF_SAFER",
        }
        if bands == 1:
            profile["nodata"] = NODATA
        self._window = rasterio.windows.Window
        self.dataset = rasterio.open(path, "w", **profile)
        if bands == 1:
            self.dataset.write_colormap(1, {i: (*map(int, colour[:3]), 255) for i, colour in enumerate(palette)})
            self.dataset.update_tags(1, classes=",".join(classes))
        else:
            for index, name in enumerate(classes, start=1):
                self.dataset.set_band_description(index, f"p({name})·255")

    @classmethod
    def like(cls, path: Path, scene: Scene, palette: Sequence[Sequence[int]], classes: Sequence[str],
             bands: int = 1) -> LabelGeoTiff:
        """On ``scene``'s grid."""
        return cls(path, (scene.height, scene.width), scene.source.crs, scene.source.transform, palette, classes,
                   bands)

    def write_rows(self, row: int, array: np.ndarray) -> None:
        array = array if array.ndim == 3 else array[None]
        self.dataset.write(array, window=self._window(0, row, array.shape[2], array.shape[1]))

    def close(self) -> None:
        self.dataset.close()


def write_label_png(path: Path, labels: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """Class indices as a palette PNG: the values are the classes, the viewer shows their colours."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.putpalette(palette_bytes(palette))
    image.save(path, format="PNG")


def write_preview(path: Path, labels: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """An RGB PNG of the labels, at most ``PREVIEW_MAX_SIDE`` pixels on its long side (nearest neighbour)."""
    step = max(1, -(-max(labels.shape) // PREVIEW_MAX_SIDE))
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:, :3]
    Image.fromarray(colours[labels[::step, ::step]]).save(path, format="PNG")


def read_preview_labels(path: Path) -> np.ndarray:
    """The labels of a written GeoTIFF, decimated to at most ``PREVIEW_MAX_SIDE`` on the long side."""
    rasterio = rasterio_module()
    with rasterio.open(path) as dataset:
        step = max(1, -(-max(dataset.height, dataset.width) // PREVIEW_MAX_SIDE))
        shape = (-(-dataset.height // step), -(-dataset.width // step))
        return dataset.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
