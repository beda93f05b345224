"""Referring segmentation as a LightningModule: DANet and its LAVT baseline on (image, sentence) batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from rsseg.metrics import ReferringMetrics
from rsseg.metrics.units import PerUnitIoU, unit_names
from rsseg.models.danet import AFFINITY_READINGS, DANet, DANetOutput, affinity_alignment_loss
from rsseg.tasks.net import network_factory, network_spec
from rsseg.tasks.segmentation import SCHEDULERS, eval_loss_metrics, log_eval_loss, with_schedule

MASK_LOSSES = ("bce", "lavt_ce")


def _reading(reading: str, reduction: str | None) -> str:
    """``affinity_reading``, or the former ``affinity_reduction`` when only that one was given."""
    if reduction is None or reduction == reading:
        return reading
    if reading != "rows":
        raise ValueError(f"affinity_reduction={reduction!r} (the former name) contradicts "
                         f"affinity_reading={reading!r}")
    return reduction


class ReferringLoss(nn.Module):
    """Eq. 11: L_total = L_mask + λ_af·L_affinity, each term returned for logging.

    ``mask_loss="bce"`` is the paper's binary cross-entropy. ``"lavt_ce"`` is LAVT's two-class
    cross-entropy with class weights (0.9, 1.1): a softmax over two logits is a sigmoid of their
    difference, so on the one-logit output it is the BCE weighted by w_y and divided by Σ w_y — the same
    number torch's weighted ``cross_entropy`` gives. ``affinity_alignment=False`` drops L_affinity.
    ``affinity_reading`` is Eq. 3's reading (``"rows"`` default, ``"sum"``, or ``"literal"``: Eq. 3 as
    printed, see :func:`rsseg.models.danet.affinity_loss`) and ``affinity_temperature`` Eq. 1's τ (paper: 1).
    ``affinity_reduction`` is the former name of ``affinity_reading`` (``"rows"``/``"sum"``), kept so that
    older configs and checkpoints load.
    """

    def __init__(self, mask_loss: str = "bce", class_weights: tuple[float, float] = (0.9, 1.1),
                 affinity_alignment: bool = True, affinity_weight: float = 0.5,
                 affinity_stages: tuple[int, ...] = (2, 3, 4), alpha: float = 0.8,
                 affinity_reading: str = "rows", affinity_temperature: float = 1.0,
                 affinity_reduction: str | None = None) -> None:
        super().__init__()
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"unknown mask_loss {mask_loss!r}; choose one of {MASK_LOSSES}")
        self.mask_loss, self.class_weights = mask_loss, tuple(float(w) for w in class_weights)
        self.affinity_alignment, self.affinity_weight = affinity_alignment, affinity_weight
        affinity_reading = _reading(affinity_reading, affinity_reduction)
        if affinity_reading not in AFFINITY_READINGS:
            raise ValueError(f"unknown affinity_reading {affinity_reading!r}; choose one of {AFFINITY_READINGS}")
        if not affinity_temperature > 0:
            raise ValueError(f"affinity_temperature must be > 0, got {affinity_temperature}")
        self.affinity_stages, self.alpha = tuple(affinity_stages), alpha
        self.affinity_reading, self.affinity_temperature = affinity_reading, float(affinity_temperature)

    def mask_term(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        if self.mask_loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        background, foreground = self.class_weights
        weight = background + (foreground - background) * target
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (weight * per_pixel).sum() / weight.sum()

    def forward(self, out: DANetOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = {"mask": self.mask_term(out.logits[:, 0].float(), target)}
        total = terms["mask"]
        if self.affinity_alignment:
            terms["affinity"] = affinity_alignment_loss(out.features, out.activations, self.affinity_stages,
                                                        self.alpha, self.affinity_reading,
                                                        self.affinity_temperature)
            total = total + self.affinity_weight * terms["affinity"]
        terms["total"] = total
        return terms


PARAM_GROUPS = ("rsseg", "lavt")
_POSITION_TABLES = ("relative_position_bias_table", "absolute_pos_embed")


def _no_weight_decay(name: str, param: nn.Parameter, rule: str) -> bool:
    """Whether a parameter (named from the task) trains without weight decay.

    ``rsseg``: every norm weight and bias (ndim ≤ 1) and Swin's position tables. ``lavt``: LAVT's
    ``train.py`` groups, where only the visual backbone (Swin with its PWAMs and gates: ``net.encoder``)
    has a no-decay group, for names containing ``norm`` and the position tables; every other bias, the
    decoder's BatchNorms and the text layers decay.
    """
    if rule == "rsseg":
        return param.ndim <= 1 or any(table in name for table in _POSITION_TABLES)
    return name.startswith("net.encoder.") and ("norm" in name or any(t in name for t in _POSITION_TABLES))


class DANetTask(LightningModule):
    """DANet / LAVT trained on referring batches (``image``, ``input_ids``, ``attention_mask``, ``mask``).

    ``net`` is :class:`rsseg.models.DANet` (``backbone``, ``pretrained``, ``text_encoder``, ``agent_alignment``,
    …, built with ``net()``; see :class:`rsseg.tasks.segmentation.SegmentationTask` for why the network is a
    dependency); ``affinity_alignment`` … ``affinity_temperature`` and ``mask_loss``/``class_weights`` are
    :class:`ReferringLoss`'s. ``net.init_args.agent_alignment`` and ``affinity_alignment`` give the paper's
    Table 3 rows; both off is the LAVT baseline. Defaults are the paper's (§4.2): AdamW lr 5e-4, batch 16
    (the datamodule's), λ_af = 0.5, K = 32, α = 0.8, stages {F_2, F_3, F_4}; weight decay 0.01 and the poly
    schedule (power 0.9, per step) are LAVT's. ``param_groups`` chooses which parameters train without
    weight decay: ``rsseg`` (every norm and bias, and the position tables) or ``lavt`` (LAVT's ``train.py``
    groups, see :func:`_no_weight_decay`); LAVT's BERT layers are chosen by the network's
    ``text_train_layers``. The tokenizer is the datamodule's: it must match the network's ``text_encoder``.

    Evaluation: :class:`rsseg.metrics.ReferringMetrics` on ``mask`` (480² under the LAVT protocol) as
    ``val/…`` and ``test/…``; when the batch also holds ``mask_native`` (datamodule ``native_masks=True``)
    the logits are upsampled to it and scored again as ``…/native/…``. A pixel is target when its
    logit is > 0 (probability > 0.5, LAVT's argmax over two channels). Each expression's (I, U) is kept
    too: after an epoch, ``unit_matrices[key]`` (key ``val``, ``test``, ``val_native``, ``test_native``) holds
    every expression's name (:func:`rsseg.metrics.units.unit_names`) and its n×2 int64 (I, U), whose sums
    are the metric's ΣI and ΣU.
    """

    def __init__(
        self,
        net: Callable[[], DANet] = DANet,
        num_classes: int = 2,
        affinity_alignment: bool = True,
        affinity_weight: float = 0.5,
        affinity_stages: tuple[int, ...] = (2, 3, 4),
        alpha: float = 0.8,
        affinity_reading: str = "rows",
        affinity_temperature: float = 1.0,
        affinity_reduction: str | None = None,
        mask_loss: str = "bce",
        class_weights: tuple[float, float] = (0.9, 1.1),
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        scheduler: str = "poly",
        warmup_steps: int = 0,
        param_groups: str = "rsseg",
        thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9),
    ) -> None:
        super().__init__()
        if num_classes != 2:
            raise ValueError(f"referring segmentation is binary (target/background); got num_classes={num_classes}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}")
        if param_groups not in PARAM_GROUPS:
            raise ValueError(f"unknown param_groups {param_groups!r}; choose one of {PARAM_GROUPS}")
        self.save_hyperparameters()
        self.hparams["net"] = network_spec(self.hparams["net"], 0)  # the config form, never a pickled callable
        self.net = network_factory(net, DANet)()
        self.criterion = ReferringLoss(mask_loss, class_weights, affinity_alignment, affinity_weight,
                                       affinity_stages, alpha, affinity_reading, affinity_temperature,
                                       affinity_reduction)
        self.eval_losses = eval_loss_metrics()
        self.metrics = nn.ModuleDict({
            f"{stage}{suffix}": ReferringMetrics(thresholds)
            for stage in ("val", "test") for suffix in ("", "_native")
        })
        self.unit_counts = {key: PerUnitIoU() for key in self.metrics}
        self.unit_matrices: dict[str, tuple[list[str], np.ndarray]] = {}  # the last evaluation's, by key

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args: Any, **kwargs: Any):
        """Lightning's, also for checkpoints written before issue 19 (see :mod:`rsseg.legacy`)."""
        from rsseg.legacy import load_legacy

        return super().load_from_checkpoint(load_legacy(cls, checkpoint_path), *args, **kwargs)

    @property
    def method_name(self) -> str:
        """``lavt`` with both alignments off (the baseline), else ``danet``."""
        return "danet" if self.hparams.affinity_alignment or self.net.agent_alignment is not None else "lavt"

    def forward(self, batch: dict[str, Any]) -> DANetOutput:
        return self.net(batch["image"], batch["input_ids"], batch["attention_mask"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self.criterion(self(batch), batch["mask"])
        total, n = terms.pop("total"), batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        self.log_dict({f"train/loss_{k}": v.detach() for k, v in terms.items()}, batch_size=n)
        return total

    def _eval_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        """Score one batch; its predicted masks (B×H×W, 1 = referred object), for callbacks."""
        logits = self(batch).logits
        n = batch["image"].shape[0]
        log_eval_loss(self, stage, self.criterion.mask_term(logits[:, 0].float(), batch["mask"]), n)
        pred = logits[:, 0] > 0
        units = unit_names(batch.get("meta"), n)
        self._score(stage, pred, batch["mask"], units)
        if "mask_native" in batch:
            native = F.interpolate(logits.float(), size=batch["mask_native"].shape[-2:], mode="bilinear",
                                   align_corners=True)
            self._score(f"{stage}_native", native[:, 0] > 0, batch["mask_native"], units)
        return pred.long()

    def _score(self, key: str, pred: torch.Tensor, mask: torch.Tensor, units: list[str]) -> None:
        self.metrics[key].update(pred, mask)
        self.unit_counts[key].update(pred, mask, units)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"pred": self._eval_step(batch, "val")}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"pred": self._eval_step(batch, "test")}

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return {"pred": (self(batch).logits[:, 0] > 0).to(torch.uint8), "meta": batch.get("meta")}

    def _log_metrics(self, stage: str) -> None:
        for key, prefix in ((stage, stage), (f"{stage}_native", f"{stage}/native")):
            metrics = self.metrics[key]
            if float(self.trainer.strategy.reduce(metrics.n.float(), reduce_op="sum")) == 0:
                continue  # nothing scored here (e.g. no native masks in this run)
            values = {f"{prefix}/{k}": float(v) for k, v in metrics.compute().items()}
            with metrics.sync_context():  # every rank's sums
                totals = [int(metrics.cum_i), int(metrics.cum_u)]
            self._keep_unit_counts(key, totals)
            self.log_dict(values, prog_bar=key == stage)
            metrics.reset()

    def _keep_unit_counts(self, key: str, totals: list[int]) -> None:
        """Every rank's per-expression (I, U) as ``unit_matrices[key]`` (collective), kept only when they add
        up to the metric's (ΣI, ΣU) ``totals``."""
        names, counts = self.unit_counts[key].compute()
        self.unit_counts[key].reset()
        self.unit_matrices.pop(key, None)
        if counts.sum(0).tolist() == totals:
            self.unit_matrices[key] = (names, counts)
        else:
            rank_zero_warn(f"{key}: the per-expression (I, U) do not add up to the metric's; none are kept")

    def unit_record(self, key: str) -> dict[str, np.ndarray]:
        """``unit_matrices[key]`` as the arrays of ``per_unit_<key>.npz``: ``names``, ``intersections``,
        ``unions`` and ``empty_iou`` (the IoU of an expression with U = 0)."""
        names, counts = self.unit_matrices[key]
        return {"names": np.array(names, dtype=str), "intersections": counts[:, 0], "unions": counts[:, 1],
                "empty_iou": np.array(self.metrics[key].empty_iou)}

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]  # frozen text layers stay out
        rule = hp.get("param_groups", "rsseg")
        no_decay = [_no_weight_decay(n, p, rule) for n, p in named]
        groups = [
            {"params": [p for (_, p), nd in zip(named, no_decay, strict=True) if not nd],
             "weight_decay": hp.weight_decay},
            {"params": [p for (_, p), nd in zip(named, no_decay, strict=True) if nd], "weight_decay": 0.0},
        ]
        return with_schedule(torch.optim.AdamW(groups, lr=hp.lr), hp.scheduler, hp.warmup_steps, self.trainer)
