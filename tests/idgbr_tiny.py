"""Tiny configurations of the classes IDGBR uses (diffusers UNet/VAE, transformers DINOv2), for CPU tests."""

TINY_UNET = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32, "attention_head_dim": 2,
    "norm_num_groups": 8,
}
TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [16, 32], "layers_per_block": 1,
    "latent_channels": 4, "norm_num_groups": 8, "sample_size": 32,
}
TINY_DINO = {
    "model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 2,
    "patch_size": 14, "image_size": 56,
}
TINY_IDGBR = {"pretrained": False, "unet_config": TINY_UNET, "vae_config": TINY_VAE, "guidance_width": 32,
              "guidance_heads": 2}


def tiny_idgbr_net(**overrides) -> dict:
    """``IDGBRTask(net=...)``: the tiny IDGBR network in the config form (``overrides`` e.g. ``vae``)."""
    return {"class_path": "rsseg.models.IDGBR", "init_args": {**TINY_IDGBR, **overrides}}


def tiny_stable_diffusion(monkeypatch) -> dict:
    """Lets ``IDGBR(pretrained=True)`` build without downloading: Stable Diffusion's loader returns the tiny
    random UNet/VAE. Returns the tiny network's other arguments (guidance size)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    import rsseg.models.idgbr as idgbr

    def load(sd_model, pretrained, unet_config, vae_config):
        unet = UNet2DConditionModel(**TINY_UNET)
        return unet, AutoencoderKL(**TINY_VAE), torch.zeros(1, 77, unet.config.cross_attention_dim)

    monkeypatch.setattr(idgbr, "_load_stable_diffusion", load)
    return {k: v for k, v in TINY_IDGBR.items() if k not in ("pretrained", "unet_config", "vae_config")}
