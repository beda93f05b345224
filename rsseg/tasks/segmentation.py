"""Semantic segmentation as a LightningModule: loss, optimiser, schedule, evaluation, logging.

Every semantic method (the smp baselines here, D2LS, IDGBR, SDCI) subclasses :class:`SegmentationTask` and
takes its network as ``net`` (configured once, in the network's own constructor; see :mod:`rsseg.tasks.net`),
so all of them report the same metric keys computed the same way.
The metric convention (excluded classes, class names) comes from the datamodule's ``spec``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn
from torchmetrics import MeanMetric

from rsseg.data.core.spec import IGNORE_INDEX
from rsseg.data.core.transforms import IMAGENET_MEAN, IMAGENET_STD
from rsseg.metrics import BoundaryWFMeasure, SegmentationMetrics
from rsseg.metrics.units import PerUnitConfusion, unit_names
from rsseg.models.baselines import SMPNet
from rsseg.models.sliding_window import padded_tile_logits, sliding_window_logits
from rsseg.models.tta import DEFAULT_INTERPOLATION, check_tta, tta_logits
from rsseg.tasks.net import NetFactory, network_factory, network_spec

LOSSES = ("ce", "ce+dice")
SCHEDULERS = ("cosine", "poly", "none")


class SegmentationLoss(nn.Module):
    """``ce``: cross-entropy; ``ce+dice``: label-smoothed CE + Dice, the UNetFormer loss.

    The CE is torch's, averaged over the pixels that are not ignored (smp's ``SoftCrossEntropyLoss``,
    used by GeoSeg, divides by all pixels, ignored ones included). Dice is 1 − (2·Σpy + s)/(Σp + Σy + s)
    per class present in the target, averaged over all classes (GeoSeg's form); smp's ``DiceLoss``
    computes (Σpy + s')/((Σp + Σy)/2 + s'), the same with s' = s/2.
    """

    def __init__(self, kind: str = "ce", ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0,
                 dice_smooth: float = 0.0):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")
        self.kind = kind
        self.ce = nn.CrossEntropyLoss(ignore_index=ignore_index, label_smoothing=label_smoothing)
        self.dice = DiceLoss("multiclass", ignore_index=ignore_index, smooth=dice_smooth / 2)

    def terms(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term of the loss by name (``ce``, and ``dice`` for ``ce+dice``)."""
        terms = {"ce": self.ce(logits, target)}
        if self.kind == "ce+dice":
            terms["dice"] = self.dice(logits, target)
        return terms

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(logits, target).values())


class SegmentationTask(LightningModule):
    """Shared training and evaluation for semantic segmentation of a network given as ``net``.

    The network is a dependency, not restated here: ``net`` is its class partially configured, typed
    ``Callable[[int], <Network>]`` by each subclass, and the task builds it with ``net(num_classes)``. In a
    config it reads ``net: {class_path: rsseg.models.D2LS, init_args: {...}}``; jsonargparse lists every
    constructor argument of the network under ``model.init_args.net.init_args`` (``--print_config``, command
    line overrides such as ``--model.init_args.net.init_args.num_stages 2``) and hands the task a partial whose
    only open argument is the number of classes, which the CLI links from the datamodule to
    ``model.init_args.num_classes`` at instantiation: so the network cannot be built before the data is known,
    and a callable (like Lightning's ``OptimizerCallable``) is the one form that both defers it and keeps the
    network's switches in its own signature. LightningCLI's ``load_from_checkpoint_support`` stores the whole
    parsed config, ``net`` included, so ``load_from_checkpoint(path)`` rebuilds the network from the checkpoint
    alone; outside the CLI ``net`` may be a class, a ``functools.partial`` of one, or its config dict, and the
    hyper-parameters always hold the config dict (:func:`rsseg.tasks.net.network_spec`). Loss, metrics,
    optimiser and logging stay here; networks stay plain ``nn.Module``s. Checkpoints of the flat layout before
    issue 19 still load here (converted on the fly); :func:`rsseg.legacy.convert_legacy_checkpoint` rewrites
    them for ``--ckpt_path``.

    Args:
        net: the network (see above); subclasses give their network class as the default.
        num_classes: number of classes; the CLI fills it in from the datamodule.
        ignore_index: label ignored by loss and metrics.
        loss: ``"ce"`` or ``"ce+dice"``.
        label_smoothing: smoothing of the cross-entropy targets.
        lr, weight_decay: AdamW settings.
        encoder_lr_mult: learning-rate factor for parameters returned by :meth:`encoder_parameters`.
        scheduler: ``"cosine"``, ``"poly"`` (power 0.9) or ``"none"``, stepped per iteration.
        warmup_steps: linear warm-up steps before the schedule.
        exclude_from_mean: classes left out of mIoU/mF1 when no datamodule spec says otherwise.
        inference_window: evaluate/predict images larger than this with sliding windows of this size
            (None: one forward pass over the whole input).
        inference_overlap: overlap of neighbouring windows in pixels.
        inference_blend: ``"gaussian"`` (centre-weighted) or ``"uniform"`` blending of overlaps.
        inference_batch: windows × images per forward pass of sliding-window inference (None: the batch
            size, one window per image); larger batches keep small models and many-window inputs busy.
        inference_tiles: (height, width): instead of sliding windows, cut the input into non-overlapping tiles
            of this size after zero-padding it above and to the left to whole tiles, and augment each tile
            alone: the huge-image inference of D2LS's ``test_uavid.py`` (1152×1024 on UAVid frames).
        inference_tta: test-time augmentation of validation, test and predict (:mod:`rsseg.models.tta`,
            ``docs/inference.md``): ``"none"``, ``"hflip"`` (identity + horizontal flip), ``"lr"`` (GeoSeg's
            ``-t lr``: identity, h, v and h+v flips) or ``"d4"`` (all eight flips × 90° rotations); the
            de-augmented logits are averaged.
        inference_scales: input scales of the TTA views (each > 0; ``[1.0]``: none); every scale runs every
            transform, so a pass costs len(transforms) × len(scales) predictions (each windowed if large).
        inference_scale_interpolation: how views are resized for scales ≠ 1, the input by s and its logits
            back by 1/s as ttach does (``"bicubic"``, what GeoSeg and D2LS pass to ttach; ``"bilinear"``,
            ``"nearest"``, ``"area"``).
        test_per_class_wfm: add per-class weighted F-measure (``WFm/<class>``, ``mWFm``) to the test
            metrics; computed in ``wfm_workers`` background threads while inference goes on.
        wfm_device: ``"cpu"`` (numpy/OpenCV in those threads) or ``"same"`` (batched torch on the
            predictions' device, for GPUs; same scores, see :class:`rsseg.metrics.SegmentationMetrics`).
        test_boundary_wfm: add IDGBR's class-agnostic boundary WF-measure, "WF (3px)", to the test metrics
            (``test/boundary_WF``; :class:`rsseg.metrics.BoundaryWFMeasure`).
    """

    network_class: type[nn.Module] = nn.Module  # what ``net`` must build (subclasses narrow it)

    def __init__(
        self,
        net: NetFactory | dict[str, Any] | None = None,
        num_classes: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        loss: str = "ce",
        label_smoothing: float = 0.0,
        lr: float = 6e-4,
        weight_decay: float = 0.01,
        encoder_lr_mult: float = 1.0,
        scheduler: str = "cosine",
        warmup_steps: int = 0,
        exclude_from_mean: tuple[int, ...] = (),
        inference_window: int | None = None,
        inference_overlap: int = 0,
        inference_blend: str = "gaussian",
        inference_batch: int | None = None,
        inference_tiles: tuple[int, int] | None = None,
        inference_tta: str = "none",
        inference_scales: tuple[float, ...] = (1.0,),
        inference_scale_interpolation: str = DEFAULT_INTERPOLATION,
        test_per_class_wfm: bool = True,
        wfm_workers: int = 2,
        wfm_device: str = "cpu",
        test_boundary_wfm: bool = True,
    ):
        super().__init__()
        if num_classes is None or num_classes < 2:
            raise ValueError(f"num_classes must be ≥ 2 (got {num_classes}); set model.init_args.num_classes")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}")
        check_tta(inference_tta, inference_scales, inference_scale_interpolation)
        if inference_tiles is not None and (len(inference_tiles) != 2 or min(inference_tiles) < 1):
            raise ValueError(f"inference_tiles must be [height, width] in pixels, got {inference_tiles}")
        if net is None:
            raise ValueError("net must be set: the network to train, e.g. net: {class_path: rsseg.models.D2LS}")
        self.save_hyperparameters()
        self.hparams["net"] = network_spec(self.hparams["net"], self.net_open_arguments)  # never a pickled callable
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.criterion = SegmentationLoss(loss, ignore_index, label_smoothing)
        self.net = self.build_network(network_factory(net, self.network_class))
        self.val_metrics: SegmentationMetrics | None = None
        self.test_metrics: SegmentationMetrics | None = None
        self.test_boundary: BoundaryWFMeasure | None = None
        self.confusion_matrices: dict[str, torch.Tensor] = {}  # the last evaluation's, by prefix (val, test)
        self.unit_confusion = {prefix: PerUnitConfusion(num_classes) for prefix in ("val", "test")}
        self.unit_matrices: dict[str, tuple[list[str], np.ndarray]] = {}  # the last evaluation's, by prefix
        self.eval_losses = eval_loss_metrics()

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args: Any, **kwargs: Any):
        """Lightning's, also for checkpoints written before issue 19 (converted on the fly, see
        :mod:`rsseg.legacy`)."""
        from rsseg.legacy import load_legacy

        return super().load_from_checkpoint(load_legacy(cls, checkpoint_path), *args, **kwargs)

    # --- what subclasses provide -------------------------------------------------------------
    net_open_arguments = 1  # the arguments of ``net`` the task gives (here the number of classes)

    def build_network(self, net: NetFactory) -> nn.Module:
        """The network from ``net``, the partially configured network class."""
        return net(self.num_classes)

    @property
    def net_args(self) -> dict[str, Any]:
        """The network's configured arguments (``net``'s ``init_args``)."""
        return dict(self.hparams["net"]["init_args"])

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters trained at ``lr * encoder_lr_mult`` (none by default)."""
        return []

    # --- evaluation set-up from the dataset's convention -------------------------------------
    def setup(self, stage: str) -> None:
        if self.val_metrics is None:
            self.val_metrics = self._make_metrics()
            self.test_metrics = self._make_metrics(per_class_wfm=self.hparams.test_per_class_wfm)
            if self.hparams.test_boundary_wfm:
                self.test_boundary = BoundaryWFMeasure()

    def _make_metrics(self, per_class_wfm: bool = False) -> SegmentationMetrics:
        spec = getattr(self._datamodule(), "spec", None)
        class_names, exclude = None, tuple(self.hparams.exclude_from_mean)
        if spec is not None:
            if spec.num_classes != self.num_classes:
                raise ValueError(
                    f"model has {self.num_classes} classes but dataset {spec.name} has {spec.num_classes}"
                )
            class_names, exclude = list(spec.classes), tuple(spec.exclude_from_mean)
        return SegmentationMetrics(
            self.num_classes, ignore_index=self.ignore_index, exclude_from_mean=exclude, class_names=class_names,
            per_class_wfm=per_class_wfm, wfm_workers=self.hparams.wfm_workers, wfm_device=self.hparams.wfm_device,
        )

    # --- steps -------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def predict_logits(self, image: torch.Tensor) -> torch.Tensor:
        """Logits at the input's size, averaged over the test-time augmentations (``inference_tta``,
        ``inference_scales``; one plain pass by default); sliding windows for views larger than
        ``inference_window``; or, with ``inference_tiles``, non-overlapping tiles of a padded frame, each
        augmented alone (:func:`rsseg.models.sliding_window.padded_tile_logits`).

        A uint8 input is a whole tile (``eval_whole_tiles``): each window is normalised on the device
        with the datamodule's statistics and logits accumulate on the CPU, so no float32 copy of the
        whole tile is ever made on the accelerator. Flips and rotations keep such a tile uint8; a scale
        ≠ 1 resizes it on the CPU into a float32 copy in its 0–255 range (4·C·H·W·s² bytes of host memory),
        normalised window by window like the tile itself: the statistics do not change.
        """
        hp = self.hparams
        preprocess = None if image.is_floating_point() else self._normaliser()
        if hp.get("inference_tiles"):  # every tile augmented alone, as the released script's ttach wrapper
            def augmented(tiles: torch.Tensor) -> torch.Tensor:
                return tta_logits(self, tiles, hp.inference_tta, hp.inference_scales, hp.inference_scale_interpolation)

            return padded_tile_logits(augmented, image, tuple(hp.inference_tiles), batch_size=self.window_batch(image),
                                      preprocess=preprocess, accumulate_device="cpu" if preprocess else None)
        return tta_logits(lambda view: self._view_logits(view, preprocess), image, hp.inference_tta,
                          hp.inference_scales, hp.inference_scale_interpolation)

    def _view_logits(self, image: torch.Tensor,
                     preprocess: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """Logits of one (augmented) view: one forward pass, or sliding windows when it exceeds the window;
        ``preprocess`` is the original input's (a resized uint8 tile is float but not yet normalised)."""
        window = self.hparams.inference_window
        if window is None or max(image.shape[-2:]) <= window:
            return self(preprocess(image.to(self.device)) if preprocess else image)
        return sliding_window_logits(self, image, window, self.hparams.inference_overlap,
                                     batch_size=self.window_batch(image), blend=self.hparams.inference_blend,
                                     preprocess=preprocess, accumulate_device="cpu" if preprocess else None)

    def window_batch(self, image: torch.Tensor) -> int:
        """Windows × images per sliding-window forward pass (``inference_batch``, at least the batch)."""
        return max(self.hparams.get("inference_batch") or 0, image.shape[0])

    def _datamodule(self):
        """The trainer's datamodule, or None outside a Trainer (e.g. a model used on its own)."""
        return getattr(self._trainer, "datamodule", None)

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return data_statistics(self._datamodule(), device)

    def _normaliser(self):
        def normalise(x: torch.Tensor) -> torch.Tensor:
            mean, std = self._statistics(x.device)
            return (x.float() / 255 - mean) / std

        return normalise

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], metrics: SegmentationMetrics, prefix: str) -> torch.Tensor:
        """Score one batch; its predicted label map (B×H×W), for callbacks (panels, W&B images)."""
        logits = self.predict_logits(batch["image"])
        if batch["image"].is_floating_point():  # whole uint8 tiles: no loss over a tile-sized logit map
            log_eval_loss(self, prefix, self.criterion(logits, batch["mask"]), batch["image"].shape[0])
        pred = logits.argmax(1).to(batch["mask"].device)
        self._update_metrics(pred, batch["mask"], metrics, prefix, batch_units(batch))
        return pred

    def _update_metrics(self, pred: torch.Tensor, mask: torch.Tensor, metrics: SegmentationMetrics,
                        prefix: str, units: Sequence[str] | None = None) -> None:
        """Score predicted labels; ``units`` (:func:`batch_units`) also adds each sample to its unit's
        matrix (None: not attributed to units, so the epoch keeps no per-unit matrices)."""
        metrics.update(pred, mask)
        if units is not None:
            self.unit_confusion[prefix].update(pred, mask, units)
        if prefix == "test" and self.test_boundary is not None:
            self.test_boundary.update(pred, mask)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"pred": self._eval_step(batch, self.val_metrics, "val")}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"pred": self._eval_step(batch, self.test_metrics, "test")}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        pred = self.predict_logits(batch["image"]).argmax(1).to(torch.uint8)
        return {"pred": pred, "meta": batch.get("meta")}

    def _log_metrics(self, metrics: SegmentationMetrics, prefix: str) -> None:
        values = {f"{prefix}/{k}": float(v) for k, v in metrics.compute().items()}
        with metrics.sync_context():  # every rank's counts (rows = target, columns = prediction)
            self.confusion_matrices[prefix] = metrics.confmat.detach().cpu().clone()
        self._keep_unit_matrices(prefix)
        self.log(f"{prefix}/mIoU", values.pop(f"{prefix}/mIoU"), prog_bar=True)
        self.log_dict(values)
        metrics.reset()

    def _keep_unit_matrices(self, prefix: str) -> None:
        """Every rank's per-unit matrices as ``unit_matrices[prefix]`` (collective), kept only when they add
        up to the dataset matrix: a unit set missing some samples would bias whatever resamples it."""
        names, confmats = self.unit_confusion[prefix].compute()
        self.unit_confusion[prefix].reset()
        self.unit_matrices.pop(prefix, None)
        if np.array_equal(confmats.sum(0), self.confusion_matrices[prefix].numpy()):
            self.unit_matrices[prefix] = (names, confmats)
        else:
            rank_zero_warn(f"{prefix}: the per-unit confusion matrices do not add up to the dataset's (samples "
                           "scored without units); no per-unit matrices are kept")

    def unit_record(self, prefix: str) -> dict[str, np.ndarray]:
        """``unit_matrices[prefix]`` with what reads it (class names, ignore index, classes left out of the
        means), as the arrays of ``per_unit_<prefix>.npz`` (:class:`rsseg.callbacks.UnitMatrixWriter`)."""
        names, confmats = self.unit_matrices[prefix]
        metrics = self.val_metrics if prefix == "val" else self.test_metrics
        return {"names": np.array(names, dtype=str), "confmats": confmats,
                "class_names": np.array(metrics.class_names, dtype=str), "ignore_index": np.array(self.ignore_index),
                "exclude_from_mean": np.array(metrics.exclude_from_mean, dtype=np.int64)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints carry how the datamodule fed the network (bands, scale, statistics, classes and colours),
        so ``rsseg infer`` can read new imagery the same way without the training config."""
        input_spec = getattr(self._datamodule(), "input_spec", None)
        if input_spec is not None:
            checkpoint["rsseg_input"] = input_spec()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics, "test")
        if self.test_boundary is not None:
            self.log("test/boundary_WF", self.test_boundary.compute()["WF"])
            self.test_boundary.reset()

    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        encoder = {id(p) for p in self.encoder_parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]  # frozen backbones stay out
        groups = [
            {"params": [p for p in trainable if id(p) not in encoder], "lr": hp.lr},
            {"params": [p for p in trainable if id(p) in encoder], "lr": hp.lr * hp.encoder_lr_mult},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=hp.weight_decay)
        return with_schedule(optimizer, hp.scheduler, hp.warmup_steps, self.trainer)


def batch_units(batch: dict[str, Any]) -> list[str]:
    """The evaluation unit of each sample of a batch (:func:`rsseg.metrics.units.unit_names`)."""
    return unit_names(batch.get("meta"), len(batch["mask"]))


def eval_loss_metrics() -> nn.ModuleDict:
    """The val and test loss as sample-weighted means over the whole split (float64, summed across ranks):
    Lightning's ``sync_dist`` would average the ranks' means, which is wrong when shards differ in size."""
    return nn.ModuleDict({stage: MeanMetric().set_dtype(torch.float64) for stage in ("val", "test")})


def log_eval_loss(task: LightningModule, stage: str, loss: torch.Tensor, batch_size: int) -> None:
    metric = task.eval_losses[stage]
    metric.update(loss.detach().double(), weight=batch_size)
    task.log(f"{stage}/loss", metric, batch_size=batch_size)


def data_statistics(data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A datamodule's per-band mean and std (ImageNet's when it has none), shaped 1×C×1×1."""
    mean = torch.tensor(getattr(data, "mean", IMAGENET_MEAN), device=device).view(1, -1, 1, 1)
    std = torch.tensor(getattr(data, "std", IMAGENET_STD), device=device).view(1, -1, 1, 1)
    return mean, std


def with_schedule(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, trainer) -> dict[str, Any]:
    """Lightning's optimiser config: ``optimizer`` with the per-step schedule ``kind`` after linear warm-up."""
    if kind == "none" and warmup_steps == 0:
        return {"optimizer": optimizer}
    total = max(int(trainer.estimated_stepping_batches), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(kind, warmup_steps, total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _lr_lambda(kind: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if kind == "poly":
            return (1 - progress) ** 0.9
        return 1.0

    return factor


class SMPSegmentationTask(SegmentationTask):
    """A segmentation-models-pytorch baseline (UNet, DeepLabV3+, SegFormer, …) as a task.

    ``net`` is :class:`rsseg.models.SMPNet` (``arch``, ``backbone``, ``pretrained``, ``in_channels``,
    ``arch_kwargs``; smp's ``encoder``/``encoder_weights`` are accepted as aliases). The rest is
    :class:`SegmentationTask`'s.
    """

    network_class = SMPNet

    def __init__(self, net: Callable[[int], SMPNet] = SMPNet, **task_kwargs: Any):
        super().__init__(net=net, **task_kwargs)

    @property
    def method_name(self) -> str:
        return self.net.arch.lower()

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.net.encoder.parameters())
