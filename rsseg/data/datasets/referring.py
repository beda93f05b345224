"""What the referring-segmentation datasets (RefSegRS, RRSIS-D) share: tokens, the LAVT resize, sampling,
the sample and the datamodule.

Samples (docs/architecture.md, the batch contract): ``image`` float32 3×S×S (ImageNet-normalised), ``mask``
int64 S×S in {0,1}, ``text`` (the raw sentence), ``input_ids`` and ``attention_mask`` int64 of length
``max_tokens``, ``meta`` with ``id`` (the referred object), ``sentence_index``, ``num_sentences``, the
dataset's own keys and the native ``height``/``width``; ``mask_native`` (native size) with ``native_mask``.

* Tokens: ``transformers.AutoTokenizer`` by hub name or local folder (default ``bert-base-uncased``),
  ``max_tokens=20``, padded with [PAD] and truncated by the tokenizer, so a long sentence keeps its final
  [SEP] (LAVT/RMSIN slice the encoding instead and can drop it; the two agree for every sentence of at
  most ``max_tokens - 2`` word pieces). All sentences are tokenised once when the dataset is built, so
  workers never load the tokenizer.
* Resolution: ``image_size=480`` resizes image (bilinear) and mask (nearest) with PIL, as the LAVT/RMSIN
  transforms do, so metrics on ``mask`` follow their protocol (evaluated at 480², not native).
* Training (``eval_mode=False``): one item per object with one of its sentences drawn at random on each
  access (torch RNG, seeded per worker). Evaluation (``eval_mode=True``): one item per (object, sentence).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, ClassVar, Protocol

import albumentations as A
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from rsseg.data.core.datamodule import BaseDataModule
from rsseg.data.core.errors import DataError
from rsseg.data.core.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise, seeded_compose
from rsseg.extras import require

logger = logging.getLogger(__name__)

DEFAULT_TOKENIZER = "bert-base-uncased"
DEFAULT_MAX_TOKENS = 20
LAVT_IMAGE_SIZE = 480


@functools.lru_cache(maxsize=4)
def load_tokenizer(name_or_path: str):
    """A Hugging Face tokenizer by hub id or local folder; cached, so splits share one instance."""
    from rsseg.pretrained import resolve

    # heavy import, only when a dataset is built
    auto_tokenizer = require("transformers", "refer", "the referring datasets' tokenizer").AutoTokenizer
    try:
        return auto_tokenizer.from_pretrained(resolve(name_or_path))
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot load tokenizer {name_or_path!r} ({type(error).__name__}: {error}); without internet "
            "it must already be in the Hugging Face cache, or pass a local folder holding its tokenizer files"
        ) from error


def tokenize(tokenizer, sentences: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` int64 N×max_tokens: [CLS] … [SEP] then [PAD], truncated to fit."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 ([CLS] and [SEP]), got {max_tokens}")
    encoded = tokenizer(
        sentences,
        max_length=max_tokens,
        padding="max_length",
        truncation=True,
        return_attention_mask=True,
        return_token_type_ids=False,
    )
    ids = torch.tensor(encoded["input_ids"], dtype=torch.long).reshape(len(sentences), max_tokens)
    mask = torch.tensor(encoded["attention_mask"], dtype=torch.long).reshape(len(sentences), max_tokens)
    return ids, mask


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image bilinear, mask nearest, to size×size with PIL, as LAVT's ``Resize`` (torchvision on PIL)."""
    image = np.array(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    mask = np.array(Image.fromarray(mask).resize((size, size), Image.Resampling.NEAREST))
    return image, mask


def as_rgb(image: np.ndarray) -> np.ndarray:
    """H×W×3 uint8: a grey image repeated (PIL ``convert('RGB')``), an alpha band dropped."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


class ReferredObject(Protocol):
    """What the shared sampling needs of a referred object: an id and its sentences."""

    id: str
    sentences: tuple[str, ...]


class ReferringDataset(Dataset):
    """Sampling and samples of one split under ``root``; a subclass lists its objects and reads their pixels.

    Subclasses implement ``list_objects`` (the split's objects, their files checked), ``read_object``
    (native RGB uint8 image and {0,1} uint8 mask) and ``extra_meta``. ``tokenizer`` is a hub id, a local
    folder or a loaded tokenizer. ``eval_mode`` defaults to True for val/test (every sentence) and False for
    train (one random sentence per object per access).
    """

    objects: list[ReferredObject]

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        tokenizer: Any = DEFAULT_TOKENIZER,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        image_size: int | None = LAVT_IMAGE_SIZE,
        eval_mode: bool | None = None,
        native_mask: bool = False,
        transform: A.Compose | None = None,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be positive or None, got {image_size}")
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.eval_mode = split != "train" if eval_mode is None else eval_mode
        self.native_mask = native_mask
        self.transform = transform
        self.mean, self.std = mean, std
        self.objects = self.list_objects()
        self.tokenize_objects(tokenizer, max_tokens)

    def list_objects(self) -> list:
        """The split's referred objects, each with its sentences, once its files are checked."""
        raise NotImplementedError

    def tokenize_objects(self, tokenizer: Any, max_tokens: int) -> None:
        """Tokenise every sentence of ``self.objects`` once; keeps the tokens, never the tokenizer."""
        if isinstance(tokenizer, str | Path):
            self.tokenizer_name = str(tokenizer)
            tokenizer = load_tokenizer(self.tokenizer_name)
        else:
            self.tokenizer_name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        sentences = [sentence for obj in self.objects for sentence in obj.sentences]
        self.input_ids, self.attention_mask = tokenize(tokenizer, sentences, max_tokens)
        # index of each object's first sentence in the flat sentence list, and the eval items
        self._first = np.cumsum([0] + [len(obj.sentences) for obj in self.objects[:-1]]).tolist()
        self._items = [(o, s) for o, obj in enumerate(self.objects) for s in range(len(obj.sentences))]

    def read_object(self, obj: Any) -> tuple[np.ndarray, np.ndarray]:
        """Native-resolution RGB uint8 image and {0,1} uint8 mask of one object, checked for size."""
        raise NotImplementedError

    def extra_meta(self, obj: Any, sentence_index: int) -> dict[str, Any]:
        """The dataset's own ``meta`` keys (file line, ref/annotation ids …) for one item."""
        raise NotImplementedError

    @property
    def num_expressions(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items) if self.eval_mode else len(self.objects)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.eval_mode:
            obj_index, sentence_index = self._items[index]
            obj = self.objects[obj_index]
        else:
            obj_index, obj = index, self.objects[index]
            sentence_index = int(torch.randint(len(obj.sentences), ()).item())
        image, mask = self.read_object(obj)
        height, width = mask.shape
        native = mask
        if self.image_size is not None:
            image, mask = resize_pair(image, mask, self.image_size)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        flat = self._first[obj_index] + sentence_index
        sample = {
            "image": normalise(image, self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "text": obj.sentences[sentence_index],
            "input_ids": self.input_ids[flat].clone(),  # not a view into every sentence's tokens
            "attention_mask": self.attention_mask[flat].clone(),
            "meta": {
                "id": obj.id,
                "sentence_index": sentence_index,
                "num_sentences": len(obj.sentences),
                **self.extra_meta(obj, sentence_index),
                "height": height,
                "width": width,
            },
        }
        if self.native_mask:
            sample["mask_native"] = torch.from_numpy(np.ascontiguousarray(native)).long()
        return sample


class ReferringDataModule(BaseDataModule):
    """A referring dataset for fit/validate/test/predict, read straight from its official layout.

    Training draws one sentence per object per epoch; val/test/predict score every expression.
    ``image_size=480`` is the LAVT protocol (None: native size); ``native_masks=True`` adds ``mask_native``
    to evaluation samples for native-resolution metrics. Model selection uses val, never test.
    ``augment`` only jitters brightness/contrast: flips and rotations would contradict "on the left" /
    "at the top". ``predict_split`` (one of ``splits``) is scored like val/test: every expression, no jitter.
    Subclasses set ``dataset_class`` (built as ``dataset_class(root, split, tokenizer=…, …)``) and ``splits``.
    """

    dataset_class: ClassVar[type[ReferringDataset]]
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    fixed_augmentation: ClassVar[str] = (
        "a referring sample is the whole image resized, and flips, crops or mosaics would contradict its "
        "sentence ('on the left'; docs/augmentation.md); augment=true only jitters brightness and contrast"
    )

    def __init__(
        self,
        root: str,
        tokenizer: str = DEFAULT_TOKENIZER,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        image_size: int | None = LAVT_IMAGE_SIZE,
        native_masks: bool = False,
        augment: bool = False,
        **kwargs: Any,
    ) -> None:
        """Tokenizer, sentence length and resolution options; loader arguments: ``BaseDataModule``."""
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be positive or None, got {image_size}")
        super().__init__(root, crop_size=None, augment=augment, **kwargs)
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.image_size = image_size
        self.native_masks = native_masks

    def has_val_split(self) -> bool:
        return True

    def _split_dataset(self, split: str, train: bool = False) -> ReferringDataset:
        """``train``: one random sentence per object and the jitter; else every expression, as evaluated."""
        transform = seeded_compose([A.RandomBrightnessContrast(0.1, 0.1, p=0.5)]) if train and self.augment else None
        dataset = self.dataset_class(
            self.root,
            split,
            tokenizer=self.tokenizer,
            max_tokens=self.max_tokens,
            image_size=self.image_size,
            eval_mode=not train,
            native_mask=self.native_masks and not train,
            transform=transform,
        )
        logger.info(
            "%s %s: %d objects, %d expressions", self.spec.name, split, len(dataset.objects), dataset.num_expressions
        )
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None):
            self.train_dataset = self._split_dataset("train", train=True)
        if stage in ("fit", "validate", None):
            self.val_dataset = self._split_dataset("val")
        if stage in ("test", None):
            self.test_dataset = self._split_dataset("test")
        if stage in ("predict", None):
            split = self.checked_predict_split(self.splits)
            reuse = split == "test" and self.test_dataset is not None
            self.predict_dataset = self.test_dataset if reuse else self._split_dataset(split)


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TOKENIZER",
    "LAVT_IMAGE_SIZE",
    "ReferringDataModule",
    "ReferringDataset",
    "as_rgb",
    "load_tokenizer",
    "resize_pair",
    "tokenize",
]
