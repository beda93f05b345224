"""Training pipelines built from a config: recipes by name, albumentations transforms, GeoSeg's mosaic.

``build_train_transform`` turns a datamodule's ``train_transforms`` list into one seeded albumentations
``Compose``; ``None`` keeps the dataset's default (``NADIR_DEFAULT``, or UAVid's own). The recipes follow
GeoSeg (github.com/WangLibo1995/GeoSeg, ``geoseg/datasets/``), the UNetFormer protocol D2LS follows, and
are albumentations transforms, so they draw from the ``Compose``'s seeded generator and move extra mask
targets (a refinement dataset's coarse map) with the mask. ``MosaicMixin`` gives a semantic dataset
GeoSeg's 4-image mosaic, drawn before the pipeline runs. docs/augmentation.md has the user's view.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from rsseg.data.core.spec import IGNORE_INDEX
from rsseg.data.core.transforms import seeded_compose

NADIR_DEFAULT = ("random_crop", "d4")  # Potsdam, Vaihingen, LoveDA, CHN6-CUG: nadir views, any orientation
AUGMENT_RECIPES = frozenset({"flips", "rot90", "d4", "hflip"})  # what augment=False drops from a default
GEOSEG_SCALES = (0.75, 1.0, 1.25, 1.5)


# --------------------------------------------------------------------------------------------------
# GeoSeg's geometric transforms as albumentations transforms


class GeoSegRandomScale(A.DualTransform):
    """Resize by a scale drawn uniformly from ``scales``: GeoSeg ``transform.py::RandomScale`` (mode "value").

    As there, the new size is ``int(scale × size)`` (truncated), the image is resized bicubically and the
    mask (and any extra mask target) nearest-neighbour, so no new label values appear. GeoSeg swaps
    height and width for non-square inputs (it reads PIL's ``(w, h)`` as ``(h, w)``); its tiles are
    square, so this keeps each side's own scale instead.
    """

    def __init__(self, scales: Sequence[float] = GEOSEG_SCALES, p: float = 1.0) -> None:
        super().__init__(p=p)
        if not scales or any(float(scale) <= 0 for scale in scales):
            raise ValueError(f"random_scale: scales must be positive numbers, got {scales!r}")
        self.scales = tuple(float(scale) for scale in scales)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        scale = self.py_random.choice(self.scales)
        height, width = params["shape"][:2]
        return {"scale": scale, "size": (max(1, int(scale * height)), max(1, int(scale * width)))}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return A.augmentations.geometric.functional.resize(img, size, cv2.INTER_CUBIC)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return A.augmentations.geometric.functional.resize(mask, size, cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scales",)


class GeoSegSmartCrop(A.DualTransform):
    """A random ``size``² crop no class of which covers ``max_ratio`` or more: GeoSeg
    ``transform.py::SmartCropV1`` with its ``RandomCrop(nopad=False)``.

    As there: a smaller input is first padded by ``(size - side) // 2 + 1`` on both sides (image with 0,
    masks with ``ignore_index``); then crops are drawn until one holds at least two classes (ignore not
    counted) and its largest class is under ``max_ratio`` of the labelled pixels, or ``max_tries`` crops
    (GeoSeg stops after its 11th: ``count > 10``) were drawn, the last one being kept.
    """

    def __init__(
        self, size: int, max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX, max_tries: int = 11, p: float = 1.0
    ) -> None:
        super().__init__(p=p)
        if size < 1 or max_tries < 1 or not 0 < max_ratio <= 1:
            raise ValueError(f"smart_crop: needs size ≥ 1, max_tries ≥ 1, 0 < max_ratio ≤ 1 (got {size}, "
                             f"{max_tries}, {max_ratio})")
        self.size, self.max_ratio, self.ignore_index, self.max_tries = size, max_ratio, ignore_index, max_tries

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        if data.get("mask") is None:
            raise ValueError("smart_crop chooses its crop by the mask's classes, so it needs a mask")
        padding = tuple((self.size - side) // 2 + 1 if side < self.size else 0 for side in data["mask"].shape[:2])
        mask = self._pad(data["mask"], padding, self.ignore_index)
        for _ in range(self.max_tries):
            y = self.py_random.randint(0, mask.shape[0] - self.size)
            x = self.py_random.randint(0, mask.shape[1] - self.size)
            if self.balanced(mask[y : y + self.size, x : x + self.size]):
                break
        return {"padding": padding, "y": y, "x": x}

    def balanced(self, crop: np.ndarray) -> bool:
        """GeoSeg's acceptance test: two classes or more, the largest under ``max_ratio``."""
        labels, counts = np.unique(crop, return_counts=True)
        counts = counts[labels != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.max_ratio

    @staticmethod
    def _pad(array: np.ndarray, padding: tuple[int, ...], value: int) -> np.ndarray:
        if not any(padding):
            return array
        widths = [(padding[0], padding[0]), (padding[1], padding[1])] + [(0, 0)] * (array.ndim - 2)
        return np.pad(array, widths, constant_values=value)

    def _crop(self, array: np.ndarray, padding: tuple[int, ...], y: int, x: int, value: int) -> np.ndarray:
        return self._pad(array, padding, value)[y : y + self.size, x : x + self.size]

    def apply(self, img: np.ndarray, padding: tuple[int, ...], y: int, x: int, **params: Any) -> np.ndarray:
        return self._crop(img, padding, y, x, 0)

    def apply_to_mask(self, mask: np.ndarray, padding: tuple[int, ...], y: int, x: int, **params: Any) -> np.ndarray:
        return self._crop(mask, padding, y, x, self.ignore_index)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "max_ratio", "ignore_index", "max_tries")


# --------------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class _Context:
    crop_size: int | None
    ignore_index: int


def _size(recipe: str, size: int | None) -> int:
    if size is None:
        raise ValueError(f"{recipe} needs a size: set the datamodule's crop_size or write "
                         f"{{recipe: {recipe}, size: <pixels>}}")
    return size


def _random_crop(ctx: _Context, size: int | None = None) -> list[A.BasicTransform]:
    size = _size("random_crop", ctx.crop_size if size is None else size)
    return [A.RandomCrop(size, size, pad_if_needed=True, fill=0, fill_mask=ctx.ignore_index)]


def _flips(ctx: _Context, p: float = 0.5) -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=p), A.VerticalFlip(p=p)]


def _rot90(ctx: _Context, p: float = 1.0) -> list[A.BasicTransform]:
    return [A.RandomRotate90(p=p)]


def _d4(ctx: _Context) -> list[A.BasicTransform]:
    return _flips(ctx) + _rot90(ctx)


def _hflip(ctx: _Context, p: float = 0.5) -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=p)]


def _random_scale(ctx: _Context, scales: Sequence[float] = GEOSEG_SCALES, p: float = 1.0) -> list[A.BasicTransform]:
    return [GeoSegRandomScale(scales, p=p)]


def _smart_crop(
    ctx: _Context, size: int | None = None, max_ratio: float = 0.75, max_tries: int = 11
) -> list[A.BasicTransform]:
    size = _size("smart_crop", ctx.crop_size if size is None else size)
    return [GeoSegSmartCrop(size, max_ratio, ctx.ignore_index, max_tries)]


def _photometric(
    ctx: _Context, brightness_limit: float = 0.25, contrast_limit: float = 0.25, p: float = 0.25
) -> list[A.BasicTransform]:
    """GeoSeg ``uavid_dataset.py``/``loveda_dataset.py::get_training_transform``'s brightness/contrast jitter."""
    return [A.RandomBrightnessContrast(brightness_limit=brightness_limit, contrast_limit=contrast_limit, p=p)]


RECIPES: dict[str, Callable[..., list[A.BasicTransform]]] = {
    "random_crop": _random_crop,
    "flips": _flips,
    "rot90": _rot90,
    "d4": _d4,
    "hflip": _hflip,
    "random_scale": _random_scale,
    "smart_crop": _smart_crop,
    "photometric": _photometric,
}
RECIPE_NAMES = (*RECIPES, "default")


def _bad(item: Any, problem: str) -> ValueError:
    return ValueError(f"train_transforms item {item!r}: {problem} (recipes: {', '.join(RECIPE_NAMES)}; or an "
                      "albumentations dict with __class_fullname__, or {class_path: albumentations.<Transform>, "
                      "init_args: {...}})")


def _recipe(item: Any, name: Any, kwargs: dict[str, Any], ctx: _Context) -> list[A.BasicTransform]:
    if name not in RECIPES:
        raise _bad(item, f"unknown recipe {name!r}")
    accepted = list(inspect.signature(RECIPES[name]).parameters)[1:]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise _bad(item, f"recipe {name!r} takes {', '.join(accepted) or 'no parameters'}, not {', '.join(unknown)}")
    return RECIPES[name](ctx, **kwargs)


def _albumentations_class(item: Any, class_path: Any) -> type[A.BasicTransform]:
    """The albumentations transform class ``class_path`` names; nothing outside albumentations is imported."""
    module_name, _, class_name = str(class_path).rpartition(".")
    if module_name.split(".")[0] != "albumentations":
        raise _bad(item, f"{class_path!r} is not an albumentations transform")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise _bad(item, f"cannot import {class_path!r} ({error})") from error
    if not (inspect.isclass(cls) and issubclass(cls, A.BasicTransform)):
        raise _bad(item, f"{class_path!r} is not an albumentations transform")
    return cls


def _instantiate(item: dict[str, Any], make: Callable[[], A.BasicTransform]) -> list[A.BasicTransform]:
    try:
        return [make()]
    except (KeyError, TypeError, ValueError) as error:  # albumentations' own complaint, named by the item
        raise _bad(item, f"cannot build it ({type(error).__name__}: {error})") from error


def _from_dict(item: dict[str, Any], ctx: _Context) -> list[A.BasicTransform]:
    if "recipe" in item:
        return _recipe(item, item["recipe"], {k: v for k, v in item.items() if k != "recipe"}, ctx)
    if "__class_fullname__" in item:
        return _instantiate(item, lambda: A.from_dict({"transform": item}))
    if "class_path" in item and set(item) <= {"class_path", "init_args"}:
        cls = _albumentations_class(item, item["class_path"])
        return _instantiate(item, lambda: cls(**(item.get("init_args") or {})))
    raise _bad(item, "a dict needs 'recipe', '__class_fullname__' or 'class_path' (with optional 'init_args')")


def default_steps_for(default_steps: Sequence[str], crop_size: int | None, augment: bool) -> list[str]:
    """The dataset default under the datamodule's switches: no crop without ``crop_size``, no flips or
    rotations with ``augment=False`` (as before recipes existed)."""
    return [
        name for name in default_steps
        if (name != "random_crop" or crop_size is not None) and (augment or name not in AUGMENT_RECIPES)
    ]


def resolve_steps(
    steps: Sequence[Any] | None,
    crop_size: int | None,
    augment: bool = True,
    ignore_index: int = IGNORE_INDEX,
    default_steps: Sequence[str] = NADIR_DEFAULT,
) -> list[A.BasicTransform]:
    """The albumentations transforms of ``steps`` (see ``build_train_transform``), in order; any bad item
    is a ValueError naming it. Draws no random numbers, so it can validate a config early."""
    if steps is not None and (isinstance(steps, (str, dict)) or not isinstance(steps, Sequence)):
        raise ValueError(f"train_transforms must be a list of steps or None, got {steps!r}")
    ctx = _Context(crop_size, ignore_index)
    defaults = default_steps_for(default_steps, crop_size, augment)
    transforms: list[A.BasicTransform] = []
    for item in defaults if steps is None else steps:
        if item == "default":
            transforms += [t for name in defaults for t in _recipe(name, name, {}, ctx)]
        elif isinstance(item, str):
            transforms += _recipe(item, item, {}, ctx)
        elif isinstance(item, dict):
            transforms += _from_dict(item, ctx)
        else:
            raise _bad(item, "expected a recipe name or a dict")
    return transforms


def build_train_transform(
    steps: Sequence[Any] | None,
    crop_size: int | None,
    augment: bool = True,
    ignore_index: int = IGNORE_INDEX,
    default_steps: Sequence[str] = NADIR_DEFAULT,
) -> A.Compose | None:
    """The seeded training ``Compose`` of ``steps``, or None when there is nothing to do.

    ``steps=None`` is ``default_steps`` (recipe names) as the dataset always had them: ``random_crop``
    only with a ``crop_size``, flips and rotations only with ``augment``. Each item of a list is a recipe
    name (``RECIPE_NAMES``; ``default`` inserts the dataset default), ``{recipe: <name>, <parameter>: …}``,
    an albumentations dict as ``A.to_dict`` writes one transform, or ``{class_path:
    albumentations.<Transform>, init_args: {…}}``.
    """
    transforms = resolve_steps(steps, crop_size, augment, ignore_index, default_steps)
    return seeded_compose(transforms) if transforms else None


# --------------------------------------------------------------------------------------------------
# Mosaic


def check_mosaic_ratio(mosaic_ratio: float) -> float:
    """``mosaic_ratio`` as a float in [0, 1], else a ValueError."""
    if isinstance(mosaic_ratio, bool) or not isinstance(mosaic_ratio, (int, float)) or not 0 <= mosaic_ratio <= 1:
        raise ValueError(f"mosaic_ratio is the probability of a mosaic sample, in [0, 1]; got {mosaic_ratio!r}")
    return float(mosaic_ratio)


def _randint(low: int, high: int) -> int:
    """Uniform in [low, high] (both included, like ``random.randint``) from torch's generator."""
    return int(torch.randint(low, high + 1, ()).item())


def _window(image: np.ndarray, mask: np.ndarray, height: int, width: int, ignore_index: int):
    """A uniformly placed ``height``×``width`` window of a pair; a smaller pair is padded first (image 0,
    mask ignore) where GeoSeg's ``albu.RandomCrop`` would fail."""
    pad = (max(0, height - mask.shape[0]), max(0, width - mask.shape[1]))
    if any(pad):
        image = np.pad(image, [(0, pad[0]), (0, pad[1]), (0, 0)])
        mask = np.pad(mask, [(0, pad[0]), (0, pad[1])], constant_values=ignore_index)
    y, x = _randint(0, mask.shape[0] - height), _randint(0, mask.shape[1] - width)
    return image[y : y + height, x : x + width], mask[y : y + height, x : x + width]


def assemble_mosaic(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], size: tuple[int, int], ignore_index: int = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray]:
    """GeoSeg's ``load_mosaic_img_and_mask`` (``potsdam_dataset.py`` and siblings): a ``size`` sample
    whose four quadrants are random windows of the four ``pairs`` (top-left, top-right, bottom-left,
    bottom-right), meeting at a point drawn uniformly in the middle half of each axis
    (``[side // 4, side - side // 4]``, both ends included)."""
    height, width = size
    cy, cx = _randint(height // 4, height - height // 4), _randint(width // 4, width - width // 4)
    shapes = ((cy, cx), (cy, width - cx), (height - cy, cx), (height - cy, width - cx))
    pieces = [_window(image, mask, h, w, ignore_index) for (image, mask), (h, w) in zip(pairs, shapes, strict=True)]
    rows = [(pieces[0], pieces[1]), (pieces[2], pieces[3])]
    image = np.concatenate([np.concatenate([left[0], right[0]], axis=1) for left, right in rows], axis=0)
    mask = np.concatenate([np.concatenate([left[1], right[1]], axis=1) for left, right in rows], axis=0)
    return image, mask


class MosaicMixin:
    """GeoSeg's mosaic for a semantic dataset that reads its pairs with ``load_pair(index)``.

    With probability ``mosaic_ratio`` (GeoSeg's test, ``u <= ratio`` for u uniform in [0, 1); never at
    0) a sample becomes a mosaic of itself and three samples drawn uniformly with replacement, at its own
    size, before the training transform runs. Random numbers come from torch's generator (per worker,
    reproducible under ``seed_everything``). With ``mosaic_ratio > 0`` every sample's meta gains
    ``mosaic`` (bool) and ``mosaic_ids`` (the four pieces' ids; empty strings for a plain sample), so
    batches collate; at 0 nothing is drawn and samples are what they were.
    """

    mosaic_ratio: float = 0.0
    ignore_index: int = IGNORE_INDEX

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def training_pair(self, index: int) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """The pair of sample ``index`` or a mosaic around it, and the meta entries that say which."""
        if self.mosaic_ratio <= 0:
            return (*self.load_pair(index), {})
        if float(torch.rand(())) > self.mosaic_ratio:
            return (*self.load_pair(index), {"mosaic": False, "mosaic_ids": [""] * 4})
        indices = [index, *torch.randint(len(self), (3,)).tolist()]
        pairs = [self.load_pair(i) for i in indices]
        if any(mask is None for _, mask in pairs):
            raise ValueError("a mosaic needs masks: this split has none")
        image, mask = assemble_mosaic(pairs, pairs[0][1].shape[:2], self.ignore_index)  # type: ignore[arg-type]
        return image, mask, {"mosaic": True, "mosaic_ids": [self.sample_id(i) for i in indices]}
