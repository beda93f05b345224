"""IDGBR against the released code (KeyanHu-git/IDGBR): fixtures from its forward pass with fixed random
weights (tests/data/parity/idgbr/README.md), loaded through rsseg's converter into IDGBR with the released
switches, compared stage by stage: label embedding, guidance modules, one guided denoising prediction, and
a 3-step DDIM sampling run with classifier-free guidance (docs/methods.md §3.8)."""

from pathlib import Path

import pytest
import torch

from rsseg.models.idgbr import IDGBR, LabelEmbedding, cubic_timesteps, skip_resolutions, unet_decode, unet_encode
from rsseg.models.released.idgbr import (
    convert_guidance,
    convert_label_embedding,
    convert_state_dict,
    load_released_checkpoint,
    load_released_label_embedding,
    load_state,
)

FIXTURES = Path(__file__).parent / "data" / "parity" / "idgbr"
TOL = 1e-5
UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [8, 16], "layers_per_block": 1, "cross_attention_dim": 8, "attention_head_dim": 2,
        "norm_num_groups": 4}
VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 2,
       "up_block_types": ["UpDecoderBlock2D"] * 2, "block_out_channels": [8, 16], "layers_per_block": 1,
       "latent_channels": 4, "norm_num_groups": 4, "sample_size": 16, "scaling_factor": 0.18215}
RELEASED = {"guidance_attention": "released", "guidance_layers": 1, "condition_sample": True, "guidance_width": 8,
            "guidance_heads": 2}


def fixture(name: str) -> dict:
    return torch.load(FIXTURES / name, map_location="cpu", weights_only=True)


def build(**overrides) -> IDGBR:
    torch.manual_seed(0)
    net = IDGBR(3, pretrained=False, unet_config=UNET, vae_config=VAE, **{**RELEASED, **overrides})
    return net.eval()


def released_state(denoise: dict, sampling: dict, labels: dict) -> dict:
    """The fixtures' weights under the released SIDModel's names."""
    parts = {"unet_gen": denoise["unet_gen"], "unet_ori": denoise["unet_ori"], "interact_net": denoise["interact_net"],
             "label_embed_net": labels["weights"], "vae": sampling["vae"]}
    return {f"{prefix}.{k}": v for prefix, weights in parts.items() for k, v in weights.items()}


@pytest.fixture(scope="module")
def loaded():
    denoise, sampling, labels = fixture("denoise.pt"), fixture("sampling.pt"), fixture("label_embedding.pt")
    net = build()
    load_state(net, convert_state_dict(released_state(denoise, sampling, labels)), "fixtures")
    net.context.copy_(denoise["context"])
    return net, denoise, sampling


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    delta = (got - want).abs().max().item()
    assert delta <= TOL, f"{what}: max |Δ| {delta:.3g}"


# --- (a) label embedding ---------------------------------------------------------------------------------
def test_label_embedding_matches_released_encode_and_decode():
    fix = fixture("label_embedding.pt")
    embedding = LabelEmbedding(fix["num_classes"], noise_std=fix["noise_std"], train_table=False)
    embedding.load_state_dict(convert_label_embedding(fix["weights"]), strict=True)
    close(embedding.encode(fix["labels"]), fix["code"], "E_e (Eq. 12)")
    close(embedding.decode(fix["noisy_code"]), fix["logits"], "D_e")


def test_cubic_timesteps_match_released_for_every_t():
    fix = fixture("timesteps.pt")
    assert torch.equal(cubic_timesteps(fix["t"], fix["num_train_timesteps"]), fix["cubic"])  # Eq. 13


# --- (b) guidance network --------------------------------------------------------------------------------
def test_guidance_modules_match_released_interactnet():
    fix = fixture("guidance.pt")
    net = build()
    assert skip_resolutions(net.unet) == [8, 8, 4, 4, 4]  # the released InteractNet's block_out_resolutions
    net.guidance.load_state_dict({**net.guidance.state_dict(), **convert_guidance(fix["weights"])}, strict=True)
    for i, block in enumerate(net.guidance.blocks):
        cond = torch.cat([fix[f"image.{i}"], fix[f"rough.{i}"]], dim=1)  # image features first
        with torch.no_grad():
            close(block(fix[f"noisy.{i}"], cond), fix[f"out.{i}"], f"f_g level {i}")


def test_released_init_zeroes_every_guidance_parameter_and_only_the_fusion_conv_learns():
    fix = fixture("guidance.pt")
    net = build(guidance_init="released")
    assert fix["zero_init_max_abs"] == 0 and all(p.abs().max() == 0 for p in net.guidance.blocks.parameters())
    gen = torch.Generator().manual_seed(0)
    outputs = [block(fix[f"noisy.{i}"], torch.cat([fix[f"image.{i}"], fix[f"rough.{i}"]], 1))
               for i, block in enumerate(net.guidance.blocks)]
    assert fix["zero_init_out_max_abs"] == 0 and all(o.abs().max() == 0 for o in outputs)
    sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outputs).backward()
    learning = {f"blocks.{k}" for k, p in net.guidance.blocks.named_parameters() if p.grad is not None and p.grad.any()}
    released = set(convert_guidance({n: torch.zeros(1) for n in fix["zero_init_trained"].split(",")}))
    assert learning == released  # the attention path gets zero gradient: it never trains
    assert learning == {f"blocks.{i}.zero_conv.{p}" for i in range(5) for p in ("weight", "bias")}


def test_default_init_keeps_the_attention_trainable():
    net = build(guidance_init="zero_out")
    block = net.guidance.blocks[0]
    assert block.zero_conv.weight.abs().max() == 0 and block.proj.weight.abs().max() == 0
    assert block.norm_out.weight.abs().min() > 0  # so proj gets a gradient, and through it the attention


# --- (c) one denoising prediction ------------------------------------------------------------------------
def test_one_guided_prediction_matches_released_stage_by_stage(loaded):
    net, fix, _ = loaded
    noisy, t = fix["noisy_latents"], fix["timesteps"]
    context = net.context.expand(2, -1, -1)
    with torch.no_grad():
        feats = unet_encode(net.unet, noisy, t, context)
        for i, f in enumerate((*feats.skips, feats.mid)):
            close(f, fix[f"f_zt.{i}"], f"f_zt level {i}")
        cond = net.guidance.condition(fix["img_latents"], fix["rough_latents"], net.context)
        for i, c in enumerate(cond):
            close(c, torch.cat([fix[f"f_image.{i}"], fix[f"f_rough.{i}"]], 1), f"f_c level {i} (t = 1)")
        for i, g in enumerate(net.guidance(feats, cond)):
            close(g, fix[f"f_g.{i}"], f"f_g level {i}")
        eps, _ = net(noisy, t, cond)
        close(eps, fix["eps"], "ε̂ with guidance residuals")
        close(unet_decode(net.unet, feats, context), fix["eps_plain"], "ε̂ without guidance (the CFG branch)")


# --- (d) sampling --------------------------------------------------------------------------------------------
def test_sampling_matches_released_pipeline(loaded):
    net, _, fix = loaded
    scheduler = net.scheduler.__class__.from_config(net.scheduler.config)
    scheduler.set_timesteps(fix["steps"])
    assert scheduler.timesteps.tolist() == fix["timesteps"].tolist()
    torch.manual_seed(fix["posterior_seed"])  # released: posterior samples from the global generator
    close(net.encode_image(fix["image"], net.condition_sample), fix["cond_latents"], "c_I = E_I(x)")
    close(net.encode_labels(fix["coarse"], net.condition_sample), fix["rough_latents"], "c_r = E_S(y_r)")
    seen = {}
    hook = net.vae.post_quant_conv.register_forward_pre_hook(lambda m, args: seen.setdefault("z", args[0]))
    torch.manual_seed(fix["posterior_seed"])
    try:
        logits = net.sample(fix["image"], fix["coarse"], fix["steps"], fix["guidance_scale"],
                            generator=torch.Generator().manual_seed(fix["noise_seed"]))
    finally:
        hook.remove()
    close(seen["z"] * net.scaling_factor, fix["final_latents"], "z_0 after DDIM")
    close(logits, fix["logits"], "D_S(z_0) logits")
    assert torch.equal(logits.argmax(1), fix["pred"])


def test_mean_conditions_differ_from_released_posterior_samples(loaded):
    net, _, fix = loaded
    assert (net.encode_image(fix["image"]) - fix["cond_latents"]).abs().max() > TOL  # why the switch exists


# --- converter and loader ------------------------------------------------------------------------------------
def write_folders(root: Path, state: dict) -> None:
    from safetensors.torch import save_file

    for part in ("unet_gen", "interact_net", "unet_ori", "label_embed_net", "vae"):
        folder = root / part
        folder.mkdir(parents=True)
        weights = {k[len(part) + 1:]: v.contiguous() for k, v in state.items() if k.startswith(part + ".")}
        save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))


def test_loader_reads_released_folders(tmp_path, loaded):
    _, denoise, sampling = loaded
    write_folders(tmp_path / "pipeline", released_state(denoise, sampling, fixture("label_embedding.pt")))
    net = build()
    load_released_checkpoint(net, tmp_path / "pipeline")
    net.context.copy_(denoise["context"])
    with torch.no_grad():
        cond = net.guidance.condition(denoise["img_latents"], denoise["rough_latents"], net.context)
        close(net(denoise["noisy_latents"], denoise["timesteps"], cond)[0], denoise["eps"], "ε̂ via the loader")


def test_loader_names_a_missing_folder(tmp_path, loaded):
    _, denoise, sampling = loaded
    write_folders(tmp_path / "ckpt", released_state(denoise, sampling, fixture("label_embedding.pt")))
    for part in ("unet_ori", "label_embed_net"):
        for f in (tmp_path / "ckpt" / part).iterdir():
            f.unlink()
        (tmp_path / "ckpt" / part).rmdir()
    with pytest.raises(ValueError, match="no unet_ori weights.*sd_model_dir"):
        load_released_checkpoint(build(), tmp_path / "ckpt")


def test_missing_key_is_named(loaded):
    _, denoise, sampling = loaded
    state = released_state(denoise, sampling, fixture("label_embedding.pt"))
    del state["interact_net.attn_blocks_down.2.attn.transformer.resblocks.0.ln_1v.weight"]
    with pytest.raises(ValueError, match=r"missing parameters for guidance\.blocks\.2\.layers\.0\.norm_v\.weight"):
        load_state(build(), convert_state_dict(state), "ckpt")


def test_unknown_key_is_named(loaded):
    _, denoise, sampling = loaded
    state = released_state(denoise, sampling, fixture("label_embedding.pt"))
    state["interact_net.attn_blocks_mid.attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unknown InteractNet keys: attn_blocks_mid\.attn\.extra\.weight"):
        convert_state_dict(state)
    with pytest.raises(ValueError, match=r"unknown IDGBR keys: controlnet\.x"):
        convert_state_dict({"controlnet.x": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unknown LabelEmbedNet keys: bit_scale"):
        convert_label_embedding({"bit_scale": torch.zeros(1)})


def test_shape_mismatch_is_named(loaded):
    _, denoise, sampling = loaded
    state = released_state(denoise, sampling, fixture("label_embedding.pt"))
    with pytest.raises(ValueError, match=r"shape mismatch.*blocks\.0\.layers\.0\.attn\.in_proj_bias \(24,\) vs \(48"):
        load_state(build(guidance_width=16), convert_state_dict(state), "ckpt")


def test_paper_guidance_does_not_take_released_weights(loaded):
    _, denoise, sampling = loaded
    state = convert_state_dict(released_state(denoise, sampling, fixture("label_embedding.pt")))
    with pytest.raises(ValueError, match="missing parameters for guidance.blocks.0.norm_cond"):
        load_state(build(guidance_attention="paper"), state, "ckpt")


def test_label_embedding_folder_loads_as_shipped(tmp_path):
    import json

    from safetensors.torch import save_file

    fix = fixture("label_embedding.pt")
    save_file(fix["weights"], str(tmp_path / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "LabelEmbedNet", "num_classes": 3,
                                                      "label_emb_inchannels": 3, "bit_scale": 1}))
    embedding = load_released_label_embedding(tmp_path)
    assert embedding.noise_std == 0.15 and not embedding.table.weight.requires_grad
    close(embedding.encode(fix["labels"]), fix["code"], "E_e from the folder")
    del fix["weights"]["embedding_conv.2.bias"]
    save_file(fix["weights"], str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"missing parameters for decoder\.2\.bias"):
        load_released_label_embedding(tmp_path)
