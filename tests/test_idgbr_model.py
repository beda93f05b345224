"""IDGBR's networks (rsseg.models.idgbr, rsseg.models.repa) with tiny diffusers/transformers configs."""

from types import SimpleNamespace

import pytest
import torch

from rsseg.models.idgbr import (
    IDGBR,
    SD15_UNET,
    GuidanceModule,
    LabelEmbedding,
    cubic_timesteps,
    sample_timesteps,
    skip_channels,
    unet_decode,
    unet_encode,
)
from rsseg.models.repa import DinoPatchFeatures, RepaProjector, repa_loss
from tests.idgbr_tiny import TINY_DINO, TINY_IDGBR, tiny_stable_diffusion


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return IDGBR(3, **TINY_IDGBR).eval()


def _inputs(batch=2, height=24, width=32, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, height, width, generator=g) * 2 - 1
    coarse = torch.randint(0, classes, (batch, height, width), generator=g)
    return image, coarse


def test_sd15_has_13_guidance_levels():
    channels = skip_channels(SimpleNamespace(config=SimpleNamespace(**SD15_UNET)))
    assert channels == [320] * 4 + [640] * 3 + [1280] * 6  # 12 skips + mid, §III-C: L = 13


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (1, 4, 6, 10)])  # (6, 10): not a multiple of the upsampling
def test_unet_halves_equal_the_diffusers_forward(model, shape):
    unet, t = model.unet, torch.tensor([3, 800][: shape[0]])
    noisy = torch.randn(shape)
    context = model.context.expand(shape[0], -1, -1)
    with torch.no_grad():
        features = unet_encode(unet, noisy, t, context)
        assert torch.equal(unet_decode(unet, features, context), unet(noisy, t, context).sample)
        residuals = [torch.randn_like(f) for f in (*features.skips, features.mid)]
        expected = unet(noisy, t, context, down_block_additional_residuals=residuals[:-1],
                        mid_block_additional_residual=residuals[-1]).sample
        assert torch.equal(unet_decode(unet, features, context, residuals), expected)


def test_fresh_guidance_leaves_the_unet_unchanged(model):
    """Zero conv + zero output projection: at step 0 the refiner's ε̂ is the (pretrained) UNet's."""
    image, coarse = _inputs()
    noisy, t = torch.randn(2, 4, 12, 16), torch.tensor([10, 900])
    with torch.no_grad():
        cond = model.condition(image, coarse)
        predicted, _ = model(noisy, t, cond)
        plain = model.unet(noisy, t, model.context.expand(2, -1, -1)).sample
    assert torch.equal(predicted, plain)
    assert all(torch.count_nonzero(block(f, c)) == 0 for block, f, c in zip(
        model.guidance.blocks, (*unet_encode(model.unet, noisy, t, model.context.expand(2, -1, -1)).skips,), cond,
        strict=False))


def test_guidance_module_is_eq_8_to_10():
    torch.manual_seed(1)
    block = GuidanceModule(channels=4, width=8, heads=2)
    for p in block.parameters():
        torch.nn.init.normal_(p)
    noisy, cond = torch.randn(1, 4, 3, 2), torch.randn(1, 8, 3, 2)
    fused = block.zero_conv(torch.cat([noisy, cond], 1))  # Eq. 8
    q = block.to_q(block.norm_query(fused.flatten(2).mT))
    k, v = block.to_kv(block.norm_cond(cond.flatten(2).mT)).chunk(2, -1)
    heads = []
    for h in range(2):  # Eq. 9 per head, by hand
        qh, kh, vh = (x[..., 4 * h: 4 * (h + 1)] for x in (q, k, v))
        heads.append(torch.softmax(qh @ kh.mT / 2.0, -1) @ vh)
    expected = fused + block.to_out(torch.cat(heads, -1)).mT.reshape(1, 4, 3, 2)  # Eq. 10
    torch.testing.assert_close(block(noisy, cond), expected)


def test_one_step_trains_unet_and_guidance_but_not_the_frozen_parts():
    torch.manual_seed(0)
    net = IDGBR(3, **TINY_IDGBR).train()
    frozen = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(("vae.", "guidance.encoder.",
                                                                                   "label_embedding."))}
    encoder_before = {k: v.clone() for k, v in net.guidance.encoder.state_dict().items()}
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    image, coarse = _inputs()
    noisy, t = torch.randn(2, 4, 12, 16), torch.tensor([10, 900])
    for _ in range(2):  # the zero layers get gradients in step 1, the layers behind them from step 2
        predicted, _ = net(noisy, t, net.condition(image, coarse))
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(predicted, torch.randn_like(predicted)).backward()
        optimizer.step()
    for k, v in net.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert all(torch.equal(v, encoder_before[k]) for k, v in net.guidance.encoder.state_dict().items())
    for block in net.guidance.blocks:
        assert block.zero_conv.weight.abs().sum() > 0 and block.to_q.weight.grad.abs().sum() > 0
    assert net.unet.conv_in.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in net.guidance.encoder.parameters())


def test_the_siamese_encoder_is_a_frozen_copy_of_the_unet_encoder(model):
    for name, value in model.guidance.encoder.state_dict().items():
        assert torch.equal(value, model.unet.state_dict()[name]), name
    assert len(model.guidance.encoder.up_blocks) == 0


def test_cubic_timesteps_follow_eq_13():
    t = torch.tensor([0, 1, 250, 500, 750, 999])
    expected = [999, 999, 984, 875, 578, 2]  # ⌊(1 − (t/1000)³)·1000⌋, at most 999
    assert cubic_timesteps(t, 1000).tolist() == expected
    sampled = sample_timesteps(200_000, 1000, cubic=True, generator=torch.Generator().manual_seed(0))
    assert sampled.min() >= 0 and sampled.max() <= 999
    assert abs(sampled.float().mean().item() - 749.5) < 3  # E[(1 − U³)·T] ≈ 0.75·T
    assert abs((sampled >= 500).float().mean().item() - 0.5 ** (1 / 3)) < 0.01  # P(t ≥ T/2) = (1/2)^(1/3)
    uniform = sample_timesteps(200_000, 1000, cubic=False, generator=torch.Generator().manual_seed(0))
    assert abs(uniform.float().mean().item() - 499.5) < 3


def test_label_embedding_is_eq_12():
    embedding = LabelEmbedding(4, noise_std=0.5)
    labels = torch.tensor([[[0, 3], [2, 1]]])
    code = embedding.encode(labels)
    expected = 2 * torch.sigmoid(embedding.table.weight[labels[0]].permute(2, 0, 1)) - 1
    torch.testing.assert_close(code[0], expected)
    assert code.abs().max() < 1 and embedding.decode(code).shape == (1, 4, 2, 2)
    with pytest.raises(ValueError, match="ignored pixels"):
        embedding.encode(torch.tensor([[[0, 255]]]))
    frozen_table = LabelEmbedding(4, train_table=False)
    assert not frozen_table.table.weight.requires_grad


def test_sampling_returns_label_logits_of_the_input_size_and_is_seeded(model):
    image, coarse = _inputs(height=24, width=32)
    run = lambda seed: model.sample(image, coarse, steps=3, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    first = run(7)
    assert first.shape == (2, 3, 24, 32)
    assert torch.equal(first, run(7)) and not torch.equal(first, run(8))
    with pytest.raises(ValueError, match="multiple of 2"):
        model.sample(image[..., :31], coarse[..., :31], steps=2)


def test_guidance_scale_one_is_the_guided_branch(model):
    noisy, t = torch.randn(1, 4, 12, 16), torch.tensor(500)
    image, coarse = _inputs(batch=1)
    cond = model.condition(image, coarse)
    for block in model.guidance.blocks:  # make guidance matter
        torch.nn.init.normal_(block.to_out.weight, std=0.1)
        torch.nn.init.normal_(block.zero_conv.weight, std=0.1)
    try:
        with torch.no_grad():
            guided, _ = model(noisy, t.expand(1), cond)
            plain = model.unet(noisy, t, model.context).sample
            torch.testing.assert_close(model.guided_noise(noisy, t, cond, 1.0), guided)
            torch.testing.assert_close(model.guided_noise(noisy, t, cond, 3.0), plain + 3 * (guided - plain))
    finally:
        for block in model.guidance.blocks:
            torch.nn.init.zeros_(block.to_out.weight)
            torch.nn.init.zeros_(block.zero_conv.weight)


def test_switched_off_coarse_guidance_ignores_the_coarse_map():
    torch.manual_seed(0)
    net = IDGBR(3, use_coarse=False, **TINY_IDGBR)
    image, coarse = _inputs()
    first, second = net.condition(image, coarse), net.condition(image, (coarse + 1) % 3)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    with_coarse = IDGBR(3, **TINY_IDGBR)
    with_coarse.load_state_dict(net.state_dict())
    assert not torch.equal(with_coarse.condition(image, coarse)[0], with_coarse.condition(image, (coarse + 1) % 3)[0])


@pytest.mark.parametrize("registers", [0, 4])
def test_dino_patch_features_drop_cls_and_registers(registers):
    config = dict(TINY_DINO, **({"model_type": "dinov2_with_registers", "num_register_tokens": registers}
                                if registers else {}))
    dino = DinoPatchFeatures(pretrained=False, config=config)
    image = torch.randn(2, 3, 64, 48)
    features = dino(image)
    assert features.shape == (2, 32, 4, 3)  # one token per 16 image pixels
    resized = torch.nn.functional.interpolate(image, size=(56, 42), mode="bicubic", align_corners=False)
    tokens = dino.model(pixel_values=resized).last_hidden_state
    assert tokens.shape[1] == 1 + registers + 12
    torch.testing.assert_close(features.flatten(2).mT, tokens[:, 1 + registers:])


def test_repa_loss_is_minus_the_mean_cosine():
    target = torch.randn(2, 8, 4, 4)
    assert repa_loss(target * 3, target).item() == pytest.approx(-1.0, abs=1e-6)
    assert repa_loss(-target, target).item() == pytest.approx(1.0, abs=1e-6)
    projected = torch.randn(2, 8, 2, 2)
    upsampled = torch.nn.functional.interpolate(projected, size=(4, 4), mode="bilinear", align_corners=False)
    expected = -torch.nn.functional.cosine_similarity(upsampled, target, dim=1).mean()
    torch.testing.assert_close(repa_loss(projected, target), expected)
    assert RepaProjector(64, 8, hidden=16)(torch.randn(2, 64, 3, 3)).shape == (2, 8, 3, 3)


def test_a_separate_vae_folder_replaces_the_stable_diffusion_vae(tmp_path):
    from diffusers import AutoencoderKL

    from tests.idgbr_tiny import TINY_VAE

    torch.manual_seed(3)
    AutoencoderKL(**TINY_VAE).save_pretrained(tmp_path / "vae")
    saved = AutoencoderKL.from_pretrained(tmp_path / "vae")
    net = IDGBR(3, vae=str(tmp_path / "vae"), **TINY_IDGBR)
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in net.vae.state_dict().items())
    assert not any(p.requires_grad for p in net.vae.parameters())
    with pytest.raises(OSError, match="cannot load the VAE"):
        IDGBR(3, vae=str(tmp_path / "missing"), **TINY_IDGBR)


def test_full_size_build_is_stable_diffusion_v1_5():
    """Random-weight builds (pretrained=False) have SD v1.5's UNet (859.52 M) and VAE (83.65 M) exactly, plus
    13 guidance modules at the released code's width 512; counted on the meta device."""
    with torch.device("meta"):
        net = IDGBR(6, pretrained=False)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(net.unet) == 859_520_964 and count(net.vae) == 83_653_863
    assert len(net.guidance.blocks) == 13 and net.repa_channels == 1280
    assert count(net.guidance.blocks) == pytest.approx(67.94e6, rel=1e-3)


def test_ddim_with_the_true_noise_follows_the_clean_latents_trajectory(model, monkeypatch):
    """Algorithm 2's loop with an oracle ε̂ = (z_t − √ᾱ_t·z_0)/√(1 − ᾱ_t): deterministic DDIM keeps
    z_t = √ᾱ_t·z_0 + √(1 − ᾱ_t)·ε* and stops at ᾱ_0 (SD's set_alpha_to_one=False), then decodes."""
    image, coarse = _inputs(batch=1)
    clean = torch.randn(1, 4, 12, 16)
    alphas = model.scheduler.alphas_cumprod
    seen = []

    def oracle(noisy, t, cond, guidance_scale):
        seen.append(int(t))
        a = alphas[int(t)]
        return (noisy - a.sqrt() * clean) / (1 - a).sqrt()

    monkeypatch.setattr(model, "guided_noise", oracle)
    with torch.no_grad():
        logits = model.sample(image, coarse, steps=25, generator=torch.Generator().manual_seed(0))
    assert seen == list(range(961, 0, -40))  # 25 "leading" steps, offset 1
    start = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(0))
    direction = (start - alphas[961].sqrt() * clean) / (1 - alphas[961]).sqrt()
    final = alphas[0].sqrt() * clean + (1 - alphas[0]).sqrt() * direction
    with torch.no_grad():
        torch.testing.assert_close(logits, model.decode_labels(final), atol=1e-4, rtol=1e-4)


# --- noise schedule (issue: SD v1.5's scheduler, not a plain linear β) ------------------------------------
def test_default_noise_schedule_is_stable_diffusion_v1_5_scaled_linear(model):
    """SD v1.5's scheduler_config.json: β = linspace(√0.00085, √0.012, 1000)², ᾱ_t = Π_{s≤t}(1 − β_s); computed
    here independently of diffusers. The paper's wording ("linear") stays available and differs."""
    import numpy as np

    betas = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), 1000, dtype=np.float64) ** 2
    expected = np.cumprod(1 - betas)
    config = model.scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end, config.num_train_timesteps) == (
        "scaled_linear", 0.00085, 0.012, 1000)
    steps = [0, 1, 250, 499, 961, 999]
    got = model.scheduler.alphas_cumprod.double().numpy()[steps]
    np.testing.assert_allclose(got, expected[steps], rtol=1e-4)  # diffusers: float32
    assert got[-1] == pytest.approx(0.0047, abs=1e-4)  # SD v1.5's ᾱ_999
    linear = IDGBR(3, beta_schedule="linear", **TINY_IDGBR).scheduler.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(linear, np.cumprod(1 - np.linspace(0.00085, 0.012, 1000)), rtol=1e-4)
    assert abs(linear[499] - expected[499]) > 0.05


def test_a_pretrained_model_takes_the_noise_schedule_of_its_scheduler_file(tmp_path, monkeypatch):
    import json

    kwargs = tiny_stable_diffusion(monkeypatch)
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
        "num_train_timesteps": 500, "set_alpha_to_one": False, "steps_offset": 1, "skip_prk_steps": True}))
    config = IDGBR(3, sd_model=str(tmp_path), pretrained=True, **kwargs).scheduler.config
    assert (config.beta_schedule, config.beta_start, config.beta_end, config.num_train_timesteps) == (
        "linear", 0.0001, 0.02, 500)
    assert (config.prediction_type, config.clip_sample, config.steps_offset) == ("epsilon", False, 1)
    explicit = IDGBR(3, sd_model=str(tmp_path), pretrained=True, beta_schedule="scaled_linear", **kwargs)
    assert explicit.scheduler.config.beta_schedule == "scaled_linear"  # a set switch wins over the file
    assert explicit.scheduler.config.beta_start == 0.0001  # the others still come from the file
    with pytest.raises(OSError, match="scheduler"):
        IDGBR(3, sd_model=str(tmp_path / "missing"), pretrained=True, **kwargs)


# --- public API ------------------------------------------------------------------------------------------
def test_every_network_is_exported_from_rsseg_models():
    import rsseg.models
    from rsseg.models import D2LS, IDGBR, SDCI, DANet, SMPNet  # noqa: F401
    from rsseg.models.sdci.model import SDCI as SDCIModel

    assert SDCI is SDCIModel and IDGBR is rsseg.models.IDGBR
    assert {"SDCI", "D2LS", "DANet", "IDGBR", "SMPNet"} <= set(rsseg.models.__all__) <= set(dir(rsseg.models))
    with pytest.raises(AttributeError):
        rsseg.models.NotANetwork  # noqa: B018
