"""D2LS as a LightningModule: the two-branch training objective of Eq. 2–8 on the shared segmentation task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rsseg.data.core.spec import IGNORE_INDEX
from rsseg.models.d2ls import D2LS, D2LSOutput, dictionary_contrastive_loss
from rsseg.tasks.segmentation import SegmentationLoss, SegmentationTask


class D2LSLoss(nn.Module):
    """L_total = λ_s·L_static + λ_d·L_dynamic (Eq. 2), L_static = CE + Dice (Eq. 3), L_dynamic = CE + Dice
    + L_con (Eq. 4–8).

    ``static_dice=False`` gives the released code's static term (GeoSeg's UNetFormerLoss: 0.4 × soft CE
    only). Label smoothing and Dice smoothing (0.05 each) are the released code's; the paper does not
    give them. Returns the total and every term, for logging.
    """

    def __init__(
        self,
        ignore_index: int = IGNORE_INDEX,
        static_weight: float = 0.4,
        dynamic_weight: float = 1.0,
        contrastive: bool = True,
        static_dice: bool = True,
        label_smoothing: float = 0.05,
        dice_smooth: float = 0.05,
    ) -> None:
        super().__init__()
        self.static_weight, self.dynamic_weight, self.contrastive = static_weight, dynamic_weight, contrastive
        self.dynamic_loss = SegmentationLoss("ce+dice", ignore_index, label_smoothing, dice_smooth)
        self.static_loss = SegmentationLoss("ce+dice" if static_dice else "ce", ignore_index, label_smoothing,
                                            dice_smooth)

    def forward(self, out: D2LSOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=target.device)
        if out.static_logits is not None:
            parts = self.static_loss.terms(out.static_logits, target)
            terms |= {f"static_{k}": v for k, v in parts.items()}
            terms["static"] = sum(parts.values())
            total = total + self.static_weight * terms["static"]
        if out.dynamic_logits is not None:
            parts = self.dynamic_loss.terms(out.dynamic_logits, target)
            if self.contrastive:
                parts["contrastive"] = dictionary_contrastive_loss(out.dynamic_dictionary)
            terms |= {k if k == "contrastive" else f"dynamic_{k}": v for k, v in parts.items()}
            terms["dynamic"] = sum(parts.values())
            total = total + self.dynamic_weight * terms["dynamic"]
        terms["total"] = total
        return terms


class D2LSTask(SegmentationTask):
    """D2LS (ICCV 2025) trained with its two-branch loss; evaluation and logging as every semantic method.

    ``net`` is :class:`rsseg.models.D2LS` (see there for the paper/code switches: ``backbone``, ``pretrained``,
    ``num_stages``, ``branches``, …); loss arguments are :class:`D2LSLoss`'s. Defaults are the paper's: AdamW,
    lr 1e-4, weight decay 0.01, cosine schedule (per step here; the released code steps per epoch), L = 3,
    C' = 256. Validation and test losses are the dynamic branch's CE + Dice.

    Validation, test and predict, test-time augmentation included (``inference_tta``, ``inference_scales``;
    ``docs/inference.md``), score :meth:`rsseg.models.D2LS.forward`: the dynamic branch's logits. The
    released LoveDA test script's "d4" is ``inference_tta: hflip`` with ``inference_scales: [0.75, 1.0,
    1.25, 1.5]`` (bicubic).
    """

    network_class = D2LS

    def __init__(
        self,
        net: Callable[[int], D2LS] = D2LS,
        static_weight: float = 0.4,
        dynamic_weight: float = 1.0,
        contrastive: bool = True,
        static_dice: bool = True,
        label_smoothing: float = 0.05,
        dice_smooth: float = 0.05,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        scheduler: str = "cosine",
        loss: str = "ce+dice",
        **task_kwargs: Any,
    ) -> None:
        super().__init__(net=net, lr=lr, weight_decay=weight_decay, scheduler=scheduler,
                         label_smoothing=label_smoothing, loss=loss, **task_kwargs)
        self.d2ls_loss = D2LSLoss(
            self.ignore_index, static_weight, dynamic_weight, contrastive, static_dice, label_smoothing, dice_smooth
        )

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.net.backbone.parameters() if p.requires_grad]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        terms = self.d2ls_loss(self.net.forward_branches(batch["image"]), batch["mask"])
        total, n = terms.pop("total"), batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        self.log_dict({f"train/loss_{k}": v.detach() for k, v in terms.items()}, batch_size=n)
        return total
