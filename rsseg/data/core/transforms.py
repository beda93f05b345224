"""Sample transforms every dataset shares: ImageNet statistics, normalisation and the seeding of the
training augmentation (reproducible under ``seed_everything``, distinct per DataLoader worker); the
training pipelines themselves are built by ``augment.build_train_transform``.

Samples stay uint8 through the albumentations transforms and are normalised last, so augmentation is
cheap and masks are only ever resized nearest-neighbour.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(image: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 H×W×C → float32 C×H×W, scaled to 0–1 then standardised per band."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return tensor.sub_(mean_t).div_(std_t)


def seeded_compose(steps: list[A.BasicTransform]) -> A.Compose:
    """``A.Compose(steps)`` seeded from torch's generator, so ``seed_everything`` makes augmentation
    reproducible (albumentations otherwise seeds its own generator from the OS)."""
    return A.Compose(steps, seed=int(torch.randint(2**31 - 1, ()).item()))


def seed_augmentation(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the dataset's albumentations transform per worker.

    The transform's generator is copied into every forked worker, so without this all workers would draw
    the same crops and flips. The seed is torch's worker seed: distinct per worker and epoch, reproducible
    under ``seed_everything``. Wrapping datasets (``.dataset``) are searched too.
    """
    dataset = torch.utils.data.get_worker_info().dataset
    while dataset is not None:
        transform = getattr(dataset, "transform", None)
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(torch.initial_seed() % 2**32)
        dataset = getattr(dataset, "dataset", None)
