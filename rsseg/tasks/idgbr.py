"""IDGBR's two training stages as LightningModules (paper 004, §III, Algorithms 1–2).

* :class:`LabelEmbeddingTask` — the label embedding network on its own (random label maps, CE).
* :class:`IDGBRTask` — the diffusion refiner: Eq. 14's loss (noise MSE + λ·REPA for the first steps),
  evaluation by 25-step DDIM sampling with classifier-free guidance, through the shared semantic metrics
  and sliding windows. Batches carry the coarse map (``rsseg.data.CoarseMapDataModule``).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.strategies import FSDPStrategy

from rsseg.checkpoints import read_checkpoint
from rsseg.extras import require
from rsseg.models.idgbr import IDGBR, LabelEmbedding, sample_timesteps
from rsseg.models.repa import DEFAULT_DINO, DinoPatchFeatures, RepaProjector, repa_loss
from rsseg.models.sliding_window import sliding_window_logits
from rsseg.models.tta import uses_tta
from rsseg.tasks.segmentation import SegmentationTask, batch_units, data_statistics, with_schedule

logger = logging.getLogger(__name__)

VAE_INPUTS = ("unit", "imagenet")


class LabelEmbeddingTask(LightningModule):
    """Trains :class:`rsseg.models.idgbr.LabelEmbedding` with cross-entropy on noised codes (§III-A).

    Defaults from the released code (the paper gives none): AdamW lr 1e-5, cosine schedule with 500
    warm-up steps, on 64² random maps (``rsseg.data.RandomLabelMapDataModule``), 20k steps of batch 4.
    ``val/accuracy`` is the noise-free reconstruction accuracy argmax(D_e(E_e(y))) = y that IDGBR relies
    on; ``val/noisy_accuracy`` the accuracy under the training noise.
    """

    def __init__(self, num_classes: int | None = None, channels: int = 3, hidden: int = 128,
                 noise_std: float = 0.5, train_table: bool = True, lr: float = 1e-5, weight_decay: float = 0.01,
                 scheduler: str = "cosine", warmup_steps: int = 500) -> None:
        super().__init__()
        if num_classes is None:
            raise ValueError("num_classes must be set (the CLI fills it in from the datamodule)")
        self.save_hyperparameters()
        self.net = LabelEmbedding(num_classes, channels, hidden, noise_std, train_table)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self.net(batch["mask"]), batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["mask"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        mask, n = batch["mask"], batch["mask"].shape[0]
        code = self.net.encode(mask)
        clean = self.net.decode(code).argmax(1)
        noisy = self.net.decode(code + self.net.noise_std * torch.randn_like(code)).argmax(1)
        self.log("val/accuracy", (clean == mask).float().mean(), prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/noisy_accuracy", (noisy == mask).float().mean(), batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        return with_schedule(optimizer, hp.scheduler, hp.warmup_steps, self.trainer)


def load_label_embedding(path: str, num_classes: int) -> LabelEmbedding:
    """The :class:`LabelEmbedding` of a :class:`LabelEmbeddingTask` checkpoint (``net.*`` weights), read
    without unpickling code (the path comes from a config)."""
    checkpoint = read_checkpoint(path, what="LabelEmbeddingTask checkpoint")
    state = {k[len("net."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("net.")}
    if "table.weight" not in state:
        raise ValueError(f"{path}: not a LabelEmbeddingTask checkpoint (no net.table.weight)")
    classes, channels = state["table.weight"].shape
    if classes != num_classes:
        raise ValueError(f"{path}: label embedding for {classes} classes, but the dataset has {num_classes}")
    embedding = LabelEmbedding(classes, channels, state["decoder.0.weight"].shape[0])
    embedding.load_state_dict(state)
    return embedding


class LatentAutoencoderTask(LightningModule):
    """Fits a diffusers ``AutoencoderKL`` to a dataset's images and label codes, for runs without Stable
    Diffusion's VAE (offline smoke runs and tests). Not a stage of the paper, which uses SD's pretrained VAE;
    it stands in for that VAE's own pretraining: a random VAE cannot carry label codes through its latent.

    Loss: MSE of the reconstruction of both inputs (images mapped to [−1, 1], codes E_e(y) of the masks,
    ignored pixels as class 0) + ``kl_weight`` × the posterior's KL. At the end of fit the scaling factor is
    set to 1 / std of the label latents (what SD's 0.18215 does for its latents) and, with ``export``, the
    VAE is written as a diffusers folder for ``IDGBRTask(vae=...)``.
    """

    def __init__(self, label_embedding: str, num_classes: int | None = None, vae_config: dict | None = None,
                 kl_weight: float = 1e-6, lr: float = 1e-3, export: str | None = None) -> None:
        super().__init__()
        from rsseg.models.idgbr import SD15_VAE

        autoencoder = require("diffusers", "idgbr", "IDGBR's label autoencoder").AutoencoderKL

        if num_classes is None:
            raise ValueError("num_classes must be set (the CLI fills it in from the datamodule)")
        self.save_hyperparameters()
        self.vae = autoencoder(**(vae_config or SD15_VAE))
        self.embedding = load_label_embedding(label_embedding, num_classes).requires_grad_(False)
        self._spreads: list[torch.Tensor] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        mask = batch["mask"].masked_fill(batch["mask"] >= self.hparams.num_classes, 0)
        codes = self.embedding.encode(mask)
        mean, std = data_statistics(getattr(self.trainer, "datamodule", None), batch["image"].device)
        inputs = torch.cat([codes, (batch["image"] * std + mean) * 2 - 1])
        posterior = self.vae.encode(inputs).latent_dist
        reconstruction = F.mse_loss(self.vae.decode(posterior.sample()).sample, inputs)
        loss = reconstruction + self.hparams.kl_weight * posterior.kl().mean()
        self._spreads = (self._spreads + [posterior.mode()[: len(codes)].detach().std()])[-20:]
        n = len(codes)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/reconstruction", reconstruction.detach(), batch_size=n)
        return loss

    def on_fit_end(self) -> None:
        if self._spreads:
            self.vae.register_to_config(scaling_factor=float(1 / torch.stack(self._spreads).mean()))
        if self.hparams.export and self.trainer.is_global_zero:
            self.vae.save_pretrained(self.hparams.export)
            logger.info("wrote the fitted VAE (scaling factor %.4f) to %s", self.vae.config.scaling_factor,
                        self.hparams.export)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.vae.parameters(), lr=self.hparams.lr)


class IDGBRTask(SegmentationTask):
    """IDGBR's refiner trained and evaluated as a semantic method (metrics, logging, windows shared).

    ``net`` is :class:`rsseg.models.IDGBR` (``sd_model``, ``pretrained``, ``vae``, guidance and noise schedule
    switches), built with ``net(num_classes, label_embedding)``. The rest:

    Args:
        label_embedding: checkpoint of the :class:`LabelEmbeddingTask` run for this dataset (its own
            stage: ``rsseg fit --config experiments/idgbr/label_embedding_<dataset>.yaml``). None with a pretrained
            network is an error: the refiner would train against an untrained encoder/decoder. A random-init
            network (``pretrained: false``) builds a fresh, untrained embedding with a warning.
        allow_untrained_label_embedding: let a pretrained network run without ``label_embedding`` too (a fresh
            embedding, with a warning): for pipeline checks only (``experiments/idgbr/smoke.yaml`` sets it).
        cubic_timesteps: Eq. 13's timestep sampling (the paper uses it on multi-class data; the released
            configs turn it off for CHN6-CUG).
        repa_model, repa_pretrained, repa_config: the DINOv2 target (hub id / folder; random tiny configs
            for tests); ``repa_weight`` λ of Eq. 14 for the first ``repa_steps`` optimiser steps, after which
            the DINO model is freed. ``repa_weight=0`` turns REPA off. The paper is inconsistent: §III (Eq. 14)
            says the first 500 steps, §IV-B (implementation details) 200, and the released code uses 200
            (``acc_steps``). Default 200: it is what the released code ran to produce the paper's numbers, it
            agrees with §IV-B and with the REPA ablation (§V-C, Fig. 11: its control group stops alignment at
            step 200; on CHN6-CUG longer alignment ends up hurting); ``repa_steps: 500`` follows §III.
        repa_hidden: width of the projector h_φ.
        vae_input: what the VAE encodes: ``"unit"`` (the image mapped to [−1, 1], as SD's VAE expects; the
            paper) or ``"imagenet"`` (the ImageNet-normalised tensor, as the released code feeds it).
        inference_steps, guidance_scale: DDIM steps and the CFG weight (paper: 25 and 3).
        sampling_seed: seed of the initial noise of every sampled window (deterministic evaluation).
        lr, weight_decay, scheduler: AdamW at a fixed 1e-5 (the paper; the released code uses a cosine
            schedule with 500 warm-up steps: ``scheduler: cosine``, ``warmup_steps: 500``).

    Ignored ground-truth pixels (255) take the coarse map's class in the diffusion target, since a latent
    target cannot skip pixels; the metrics still ignore them.

    Test-time augmentation (``inference_tta``, ``inference_scales``) is refused: it is not part of the
    method, and the refiner's inference (DDIM sampling conditioned on the coarse map, :meth:`refine_logits`)
    does not go through :meth:`SegmentationTask.predict_logits`. The coarse maps it refines may come from a
    model evaluated with TTA (``rsseg predict`` with CoarseMapWriter records its settings).
    """

    network_class = IDGBR
    net_open_arguments = 2  # the number of classes and the label embedding
    segments_images = False  # its input is an image and a coarse map (rsseg infer refuses its checkpoints)
    segments_images_reason = ("refines the coarse maps of another method: run rsseg infer with that method's "
                              "checkpoint")

    def __init__(
        self,
        net: Callable[[int, LabelEmbedding | None], IDGBR] = IDGBR,
        label_embedding: str | None = None,
        cubic_timesteps: bool = True,
        repa_model: str = DEFAULT_DINO,
        repa_pretrained: bool = True,
        repa_config: dict | None = None,
        repa_weight: float = 0.5,
        repa_steps: int = 200,
        repa_hidden: int = 2048,
        vae_input: str = "unit",
        inference_steps: int = 25,
        guidance_scale: float = 3.0,
        sampling_seed: int = 42,
        lr: float = 1e-5,
        weight_decay: float = 0.01,
        scheduler: str = "none",
        inference_window: int | None = 512,
        allow_untrained_label_embedding: bool = False,
        **task_kwargs: Any,
    ) -> None:
        if vae_input not in VAE_INPUTS:
            raise ValueError(f"vae_input must be one of {VAE_INPUTS}, got {vae_input!r}")
        if uses_tta(task_kwargs.get("inference_tta", "none"), task_kwargs.get("inference_scales", (1.0,))):
            raise ValueError("IDGBR does not support test-time augmentation (not part of the method; its DDIM "
                             "sampling does not go through predict_logits): leave inference_tta 'none' and "
                             "inference_scales [1.0]")
        if task_kwargs.get("inference_tiles"):
            raise ValueError("IDGBR refines with sliding windows (inference_window); inference_tiles is not used")
        self._label_embedding_path = label_embedding
        self._allow_untrained_label_embedding = allow_untrained_label_embedding
        super().__init__(net=net, lr=lr, weight_decay=weight_decay, scheduler=scheduler,
                         inference_window=inference_window, **task_kwargs)
        self.repa_projector: RepaProjector | None = None
        self._dino: DinoPatchFeatures | None = None  # kept out of the module tree: never checkpointed
        if repa_weight > 0 and repa_steps > 0:
            require("transformers", "idgbr", "IDGBR's REPA (DINOv2 targets; repa_weight: 0 turns it off)")
            dim = _dino_dim(repa_model, repa_pretrained, repa_config)
            self.repa_projector = RepaProjector(self.net.repa_channels, dim, repa_hidden)

    @property
    def bench_note(self) -> str | None:
        """Why a bench row of this model says nothing about the method, if it does (a random tiny UNet)."""
        if not self.net_args.get("pretrained", True):
            return ("IDGBR from a random tiny diffusion UNet and VAE trained for a few dozen steps (offline smoke "
                    f"profile), sampled with {self.hparams.inference_steps} DDIM steps: the refiner has not learnt "
                    "to denoise, so it scores below its coarse maps; the paper profile fine-tunes Stable Diffusion "
                    "v1.5 and samples with 25")
        return None

    def build_network(self, net: Callable[..., IDGBR]) -> IDGBR:
        if self._label_embedding_path:
            embedding = load_label_embedding(self._label_embedding_path, self.num_classes)
        elif self.net_args.get("pretrained", True) and not self._allow_untrained_label_embedding:
            raise ValueError(
                "IDGBR: label_embedding is not set: the refiner would be trained against an untrained label "
                "encoder/decoder. Train the label embedding first (its own stage: `rsseg fit --config "
                "experiments/idgbr/label_embedding_<dataset>.yaml`) and pass its checkpoint as "
                "--model.init_args.label_embedding <ckpt> (allow_untrained_label_embedding: true skips this check, "
                "for pipeline checks only)")
        else:
            logger.warning("IDGBR: no label_embedding checkpoint given; the label embedding is untrained "
                           "(train one with experiments/idgbr/label_embedding_*.yaml)")
            embedding = None
        return net(self.num_classes, embedding)

    # --- inputs -------------------------------------------------------------------------------------
    def _vae_image(self, image: torch.Tensor) -> torch.Tensor:
        """The VAE's input from the datamodule's normalised image (see ``vae_input``)."""
        if self.hparams.vae_input == "imagenet":
            return image
        mean, std = self._statistics(image.device)
        return (image * std + mean) * 2 - 1

    # --- REPA ---------------------------------------------------------------------------------------
    @property
    def repa_active(self) -> bool:
        hp = self.hparams
        return self.repa_projector is not None and self.global_step < hp.repa_steps

    def _dino_model(self) -> DinoPatchFeatures:
        if self._dino is None:
            hp = self.hparams
            dino = DinoPatchFeatures(hp.repa_model, hp.repa_pretrained, hp.repa_config).to(self.device)
            object.__setattr__(self, "_dino", dino)  # not a submodule: no checkpoint, no optimiser, no DDP
        return self._dino

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A refiner built without REPA (``repa_weight: 0``, e.g. to test offline) still loads a checkpoint
        trained with it: the projector is only used in training."""
        if self.repa_projector is None:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("repa_projector.")]:
                del state[key]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._dino is not None and not self.repa_active:
            self._dino = None  # Eq. 14: λ = 0 from now on; free the DINO model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.info("IDGBR: representation alignment ends at step %d; DINOv2 released", self.global_step)

    # --- training (Algorithm 1) ------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image, mask, coarse = batch["image"], batch["mask"], batch["coarse"]
        target = torch.where(mask == self.ignore_index, coarse, mask)
        cond = self.net.condition(self._vae_image(image), coarse)
        clean = self.net.encode_labels(target, sample=True)
        noise = torch.randn_like(clean)
        t = sample_timesteps(clean.shape[0], self.net.scheduler.config.num_train_timesteps,
                             self.hparams.cubic_timesteps, device=clean.device)
        noisy = self.net.scheduler.add_noise(clean, noise, t)
        predicted, hidden = self.net(noisy, t, cond)
        mse = F.mse_loss(predicted.float(), noise.float())
        loss, n = mse, image.shape[0]
        if self.repa_active:
            alignment = repa_loss(self.repa_projector(hidden), self._dino_model()(image))
            loss = loss + self.hparams.repa_weight * alignment
            self.log("train/loss_repa", alignment.detach(), batch_size=n)
        elif self.repa_projector is not None:
            # after the REPA steps the projector gets zero gradients rather than none: DDP expects every
            # trainable parameter to take part in every step
            loss = loss + 0.0 * sum(p.sum() for p in self.repa_projector.parameters())
        self.log("train/loss_mse", mse.detach(), batch_size=n)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Norm clipping (the configs' ``gradient_clip_val: 1.0``) also under FSDP: the norm of sharded
        gradients has to be reduced across ranks, which only the root ``FullyShardedDataParallel.clip_grad_norm_``
        does — Lightning's FSDP precision plugin refuses norm clipping for that reason."""
        if (isinstance(self.trainer.strategy, FSDPStrategy) and gradient_clip_val
                and gradient_clip_algorithm in (None, "norm")):
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # --- inference (Algorithm 2) ------------------------------------------------------------------------
    def refine(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Refined logits B×K×H×W of one window batch; the same seed gives the same noise every call."""
        generator = torch.Generator().manual_seed(self.hparams.sampling_seed)
        return self.net.sample(self._vae_image(image), coarse, self.hparams.inference_steps,
                               self.hparams.guidance_scale, generator)

    def refine_logits(self, image: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Logits at the input's size: one pass, or sliding windows (the coarse map travels as an extra
        channel of the windowed input) when the image exceeds ``inference_window``."""
        window = self.hparams.inference_window
        if window is None or max(image.shape[-2:]) <= window:
            return self.refine(image, coarse)
        stacked = torch.cat([image, coarse.unsqueeze(1).to(image.dtype)], dim=1)
        return sliding_window_logits(lambda x: self.refine(x[:, :-1], x[:, -1].round().long()), stacked, window,
                                     self.hparams.inference_overlap, batch_size=self.window_batch(image),
                                     blend=self.hparams.inference_blend)

    def _eval_step(self, batch: dict[str, Any], metrics, prefix: str) -> torch.Tensor:
        if not batch["image"].is_floating_point():
            raise ValueError("IDGBR evaluates prepared patches with their coarse maps, not whole uint8 tiles")
        pred = self.refine_logits(batch["image"], batch["coarse"]).argmax(1).to(batch["mask"].device)
        self._update_metrics(pred, batch["mask"], metrics, prefix, batch_units(batch))
        return pred

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        pred = self.refine_logits(batch["image"], batch["coarse"]).argmax(1).to(torch.uint8)
        return {"pred": pred, "meta": batch.get("meta")}


def _dino_dim(name: str, pretrained: bool, config: dict | None) -> int:
    """DINOv2's feature width without loading its weights (from ``config`` or the model's config file)."""
    if config is not None:
        return int(config["hidden_size"])
    auto_config = require("transformers", "idgbr", "IDGBR's REPA").AutoConfig
    try:
        return int(auto_config.from_pretrained(name).hidden_size)
    except OSError as error:
        raise OSError(f"cannot read the config of DINOv2 {name!r} ({error}); pass repa_config or a local folder, "
                      "or set repa_weight: 0") from error
