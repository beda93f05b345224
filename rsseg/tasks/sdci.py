"""SDCI as an inference-only LightningModule: ``rsseg test|validate|predict`` with the shared metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rsseg.data.core.spec import IGNORE_INDEX
from rsseg.models.sdci.model import SDCI
from rsseg.models.sdci.prompts import load_prompts
from rsseg.models.tta import DEFAULT_INTERPOLATION
from rsseg.tasks.segmentation import SegmentationTask, batch_units


def _prompt_file(path: str) -> Path:
    """``path`` as given, or, when that does not exist, relative to the folder holding rsseg's
    ``experiments/`` (so the configs' ``experiments/sdci/prompts/…`` work from any working directory)."""
    from rsseg.paths import default_experiments_dir

    given = Path(path)
    beside = default_experiments_dir().resolve().parent / given
    return given if given.exists() or given.is_absolute() or not beside.exists() else beside


class SDCITask(SegmentationTask):
    """SDCI (paper 002) scored like every semantic method; training-free, so ``fit`` stops with a message.

    Args:
        prompts: the prompt table (``experiments/sdci/prompts/<dataset>.yaml``, see
            :mod:`rsseg.models.sdci.prompts`); ``prompt_setting``: ``"ori"``, ``"gen"`` or ``"set_of_gen"``.
        background: ``"ignore"`` (SDCI's protocol: the background class is never predicted and its pixels
            are not scored) or ``"predict"`` (a class like the others, as SegEarth-OV counts it).
        class_names: the dataset's class names in label order; taken from the datamodule's spec when None.
        inference_window: 512, the paper's full-image size; larger inputs go through sliding windows.
        inference_tta, inference_scales, inference_scale_interpolation: test-time augmentation as in
            :class:`SegmentationTask` (SDCI's scores go through the same ``predict_logits``, and its
            network resizes every view to its CLIP/DINO input sizes). Not part of the method: the paper
            reports single passes, the default.
        net: :class:`rsseg.models.sdci.model.SDCI` and its arguments (paper defaults), built with ``net()``.
    """

    network_class = SDCI
    net_open_arguments = 0

    def __init__(
        self,
        net: Callable[[], SDCI] = SDCI,
        num_classes: int | None = None,
        prompts: str | None = None,
        prompt_setting: str = "ori",
        background: str = "ignore",
        class_names: list[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        exclude_from_mean: tuple[int, ...] = (),
        inference_window: int | None = 512,
        inference_overlap: int = 0,
        inference_blend: str = "gaussian",
        inference_tta: str = "none",
        inference_scales: tuple[float, ...] = (1.0,),
        inference_scale_interpolation: str = DEFAULT_INTERPOLATION,
        test_per_class_wfm: bool = True,
        wfm_workers: int = 2,
        wfm_device: str = "cpu",
        test_boundary_wfm: bool = True,
    ) -> None:
        if prompts is None:
            raise ValueError("SDCI needs a prompt table: set model.init_args.prompts (experiments/sdci/prompts/)")
        super().__init__(net=net, num_classes=num_classes, ignore_index=ignore_index,
                         exclude_from_mean=exclude_from_mean, inference_window=inference_window,
                         inference_overlap=inference_overlap, inference_blend=inference_blend,
                         inference_tta=inference_tta, inference_scales=inference_scales,
                         inference_scale_interpolation=inference_scale_interpolation,
                         test_per_class_wfm=test_per_class_wfm, wfm_workers=wfm_workers, wfm_device=wfm_device,
                         test_boundary_wfm=test_boundary_wfm, scheduler="none")
        self.table = None  # the prompt table, read for the dataset's classes in setup

    training_free = True  # `rsseg bench` evaluates it without fitting

    @property
    def bench_note(self) -> str | None:
        """Why a bench row of this model means nothing, if it does (random CLIP or DINO weights)."""
        net = self.net_args
        if net.get("clip_pretrained", "openai") is None or not net.get("dino_pretrained", True):
            return ("SDCI with random CLIP/DINO weights (offline smoke profile): training-free, so these scores "
                    "are not meaningful; the full profile loads the real weights from the open_clip and Hugging "
                    "Face caches")
        return None

    def build_network(self, net: Callable[[], SDCI]) -> SDCI:
        return net()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            raise RuntimeError("SDCI is training-free: there is nothing to fit. Evaluate it with `rsseg test "
                               "--config experiments/sdci/<dataset>.yaml` (or validate / predict)")
        super().setup(stage)
        self.set_classes()

    def set_classes(self, class_names: list[str] | None = None) -> None:
        """Read the prompt table for the dataset's classes and encode its text (once)."""
        if self.table is not None:
            return
        names = class_names or self.hparams.class_names
        if names is None:
            spec = getattr(self._datamodule(), "spec", None)
            if spec is None:
                raise ValueError("SDCI needs the dataset's class names: use a datamodule or set class_names")
            names = list(spec.classes)
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for a {self.num_classes}-class model")
        hp = self.hparams
        self.table = load_prompts(_prompt_file(hp.prompts), hp.prompt_setting, names, hp.background)
        self.net.set_text([list(n) for n in self.table.names], list(self.table.templates),
                          [list(d) for d in self.table.distractors])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Scores B×num_classes×H×W from a normalised image batch (classes SDCI does not predict stay 0)."""
        mean, std = self._statistics(image.device)
        probabilities = self.net((image * std + mean).clamp(0, 1))
        scores = probabilities.new_zeros(image.shape[0], self.num_classes, *image.shape[-2:])
        scores[:, list(self.table.classes)] = probabilities
        return scores

    def _update_metrics(self, pred: torch.Tensor, mask: torch.Tensor, metrics, prefix: str,
                        units: Sequence[str] | None = None) -> None:
        if self.hparams.background == "ignore" and self.table.background is not None:
            mask = mask.masked_fill(mask == self.table.background, self.ignore_index)  # SDCI's protocol
        super()._update_metrics(pred, mask, metrics, prefix, units)

    def _eval_step(self, batch: dict[str, Any], metrics, prefix: str) -> torch.Tensor:
        pred = self.predict_logits(batch["image"]).argmax(1).to(batch["mask"].device)
        self._update_metrics(pred, batch["mask"], metrics, prefix, batch_units(batch))
        return pred

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        raise RuntimeError("SDCI is training-free")

    def configure_optimizers(self) -> None:
        return None
