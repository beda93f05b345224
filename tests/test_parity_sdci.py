"""SDCI's ``released`` switches reproduce the released forward pass (yu-ni1989/SDCI @ 7f33971), stage by stage.

Fixtures (tests/data/parity/sdci/, README.md there): tiny random OpenAI-CLIP and DINOv2-hub weights in their
released naming, loaded through ``rsseg.models.released.sdci``; the outputs come from the released code.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rsseg.models.released.sdci import (
    convert_clip_state_dict,
    convert_dino_state_dict,
    convert_state_dict,
    load_released_checkpoint,
)
from rsseg.models.sdci.cscp import as_distribution, cscp_solve, edge_weights
from rsseg.models.sdci.fusion import align_attention, knn_transition, zero_shot_scores

DATA = Path(__file__).parent / "data" / "parity" / "sdci"
CLIP_FILE, DINO_FILE = DATA / "clip_openai.pt", DATA / "dinov2_hub.pt"
ATOL = 1e-5

PARITY_CLIP = {  # OpenAI CLIP class, width 32, 3 layers, 2 heads, patch 14, native grid 2×2, QuickGELU
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 28, "patch_size": 14, "width": 32, "layers": 3, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
PARITY_DINO = {  # DINOv2 ViT with 4 registers, width 32, 2 layers, 2 heads, patch 14, native grid 4×4
    "model_type": "dinov2_with_registers", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "mlp_ratio": 2, "patch_size": 14, "image_size": 56, "num_register_tokens": 4,
}
RELEASED_SWITCHES = {
    "attention_fusion": "released", "align": "released", "graph_features": "last", "last_threshold": 0.2,
    "logit_scale": 50.0, "caf_weight": 1.0, "alpha": 0.9, "diffusion_steps": 40, "temperature": 0.07,
    "score_normalization": "released", "class_threshold": 0.0, "cscp": {"solver": "released"},
}


def _max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def _close(actual, expected, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = _max_diff(actual, expected)
    assert diff <= ATOL, f"{what}: max |Δ| = {diff:.3g}"


@pytest.fixture(scope="module")
def fixtures():
    load = lambda name: torch.load(DATA / name, weights_only=True)  # noqa: E731
    return {"inputs": load("inputs.pt"), "stages": load("stages.pt"), "cscp": load("cscp.pt")}


@pytest.fixture(scope="module")
def model(fixtures):
    from rsseg.models.sdci.model import SDCI

    net = SDCI(clip_pretrained=None, clip_config=PARITY_CLIP, clip_size=56, dino_pretrained=False,
               dino_config=PARITY_DINO, dino_size=70, knn=5, **RELEASED_SWITCHES)
    load_released_checkpoint(net, CLIP_FILE, DINO_FILE)
    inputs = fixtures["inputs"]
    fg, bg = inputs["text_fg"], inputs["text_bg"]
    net.text = torch.cat([fg, bg, F.normalize(fg.mean(0, keepdim=True), dim=-1)])  # as set_text builds it
    net.num_outputs = fg.shape[0]
    return net


@pytest.fixture(scope="module")
def image(fixtures):
    return fixtures["inputs"]["image"][None].float() / 255


@pytest.fixture(scope="module")
def branches(model, image):
    with torch.no_grad():
        return model.semantic(model._clip_input(image)), model.structural(model._dino_input(image))


def test_clip_branch_levels_attention_and_scores(model, branches, fixtures):
    stages, (semantic, _) = fixtures["stages"], branches
    assert semantic["grid"] == (4, 4)
    for level in range(3):
        _close(semantic["features"][0, level], stages["clip.features"][level, 1:], f"CLIP level {level} tokens")
    _close(semantic["attention"][0], stages["clip.attention"].mean(0)[1:, 1:], "CLIP fused attention")
    scores = zero_shot_scores(semantic["features"], model.text, model.num_outputs, model.logit_scale)
    _close(scores[0], stages["clip.scores"], "CLIP patch-text scores")


def test_clip_branch_inputs_of_the_last_block(model, image, fixtures):
    """The levels entering the last block's ln_1 (block ℓ's own ln_1 input normalised, then the last block's
    input) and the summed per-head maps of blocks 1…N−1, seen through hooks and the block helper."""
    stages, semantic = fixtures["stages"], model.semantic
    blocks = semantic.visual.transformer.resblocks
    seen = []
    hook = blocks[-1].ln_1.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    try:
        with torch.no_grad():
            semantic(model._clip_input(image))
    finally:
        hook.remove()
    _close(torch.stack([level[0] for level in seen]), stages["clip.levels_in"], "levels entering the last block")
    with torch.no_grad():
        x, _ = semantic._embed(model._clip_input(image))
        summed = 0
        for block in blocks[:-1]:
            x, attention, _ = semantic._block(block, x)
            summed = summed + attention
    _close(summed[0], stages["clip.attn_sum"], "summed attention of blocks 1..N-1")


def test_clip_input_pil_resize(model, fixtures):
    """``clip_resize="pil"``: the released preprocessing (``CLIP._resize``: short side to ``size`` rounded half
    up to the patch, PIL bicubic on the 8-bit image; ``ToTensor``; CLIP's normalisation)."""
    import numpy as np
    from PIL import Image

    tile = fixtures["inputs"]["image"]
    saved = model.clip_resize, model.clip_size
    model.clip_resize, model.clip_size = "pil", 63  # 63/14 = 4.5 → 5 patches (half up): 70×70
    try:
        actual = model._clip_input(tile[None].float() / 255)
    finally:
        model.clip_resize, model.clip_size = saved
    pil = Image.fromarray(tile.permute(1, 2, 0).numpy()).resize((70, 70), Image.Resampling.BICUBIC)
    expected = (torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float() / 255 - model.clip_mean)
    _close(actual, expected / model.clip_std, "PIL-resized CLIP input")


def test_dino_branch_features_attention_and_scores(model, branches, fixtures):
    stages, (_, structural) = fixtures["stages"], branches
    assert structural["grid"] == (5, 5)
    _close(structural["features"][0], stages["dino.features"][:, 1:], "DINO layer features")
    _close(structural["attention"][0], stages["dino.attention"].mean(0)[1:, 1:], "DINO last attention")
    scores = zero_shot_scores(structural["features"], model.text, model.num_outputs, model.logit_scale)
    _close(scores[0], stages["dino.scores"], "DINO patch-text scores")


def test_caf(model, branches, fixtures):
    stages, (semantic, structural) = fixtures["stages"], branches
    _close(align_attention(structural["attention"], (5, 5), (4, 4), "released")[0],
           stages["caf.dino_to_clip_attention"], "Align(DINO → CLIP)")
    _close(align_attention(semantic["attention"], (4, 4), (5, 5), "released")[0],
           stages["caf.clip_to_dino_attention"], "Align(CLIP → DINO)")
    out = model._cross_fusion(semantic, structural)
    _close(out["clip"][0], stages["caf.clip"], "CAF CLIP scores (Eq. 8)")
    _close(out["dino"][0], stages["caf.dino"], "CAF DINO scores (Eq. 9)")


def test_bcdr(model, branches, fixtures):
    stages, (semantic, structural) = fixtures["stages"], branches
    for name, branch in (("dino", structural), ("clip", semantic)):
        indices, weights = knn_transition(branch["features"][:, -1], 5, 0.07)
        dense = torch.zeros(1, indices.shape[1], indices.shape[1]).scatter_(2, indices, weights)
        _close(dense[0], stages[f"bcdr.transition_{name}"], f"{name} transition (Eq. 11-12)")
    out = model._cross_fusion(semantic, structural)
    model._diffuse(out, semantic, structural)
    assert out["clip_grid"] == (5, 5) and out["dino_grid"] == (4, 4)
    for name in ("clip", "dino"):
        _close(out[name][0], stages[f"bcdr.{name}"], f"BCDR {name} scores (Eq. 13-15)")
        _close(out[f"{name}_presence"][0], stages[f"bcdr.{name}_presence"], f"{name} presence")


def test_score_maps(model, image, fixtures):
    stages = fixtures["stages"]
    with torch.no_grad():
        out = model.branch_scores(image)
    for name in ("clip", "dino"):
        maps = model.score_maps(out[name], out[f"{name}_grid"], out[f"{name}_presence"], (56, 56))
        _close(maps[0], stages[f"maps.{name}"], f"{name} score maps")
        # the code's prep_prob (softmax if needed, clamp); its solver then renormalises each pixel
        _close(as_distribution(maps, renormalize=False)[0], stages[f"cscp.p_{name}"], f"{name} distribution")


def test_superpixels_are_the_released_felzenszwalb(model, fixtures):
    labels = model.cscp.superpixels(fixtures["inputs"]["image"][None])
    assert torch.equal(labels[0], fixtures["inputs"]["superpixels"])


@pytest.mark.parametrize("case", ["pipeline", "fixed"])
def test_cscp_released_schedule(fixtures, case):
    if case == "pipeline":
        stages = fixtures["stages"]
        p_clip, p_dino = (stages[f"cscp.p_{name}"][None] for name in ("clip", "dino"))  # the code's prep_prob
        labels, q_ref, y_ref = fixtures["inputs"]["superpixels"], stages["cscp.q"], stages["cscp.labels"]
    else:
        fixed = fixtures["cscp"]
        p_clip, p_dino = (as_distribution(fixed[name][None], renormalize=False) for name in ("clip", "dino"))
        labels, q_ref, y_ref = fixed["superpixels"], fixed["q"], fixed["labels"]
    wx, wy = edge_weights(labels, 1.0, 0.1)
    q, info = cscp_solve(p_clip, p_dino, wx, wy, 1.0, 0.2, 0.1, schedule="released")
    assert int(info.iterations[0]) == 100
    _close(q[0], q_ref, f"CSCP q ({case})")
    assert torch.equal(q[0].argmax(0), y_ref)


def test_end_to_end(model, image, fixtures):
    """The whole forward. Its maps equal the code's to ≤ 1e-5 (test_score_maps) and CSCP on the code's own
    maps to ≤ 1e-5 (test_cscp_released_schedule), but the released CSCP is not continuous at that scale:
    its 10-step bisection per PDHG step turns a 1e-7 relative change of the maps into ~1e-3 in q (measured
    on these fixtures), so end to end q is held to the solver's own sensitivity and the labels exactly."""
    stages = fixtures["stages"]
    with torch.no_grad():
        q = model(image)
    assert q.shape == (1, 3, 56, 56)
    assert _max_diff(q[0], stages["cscp.q"]) <= 3e-3
    assert torch.equal(q[0].argmax(0), stages["cscp.labels"])


def test_end_to_end_without_cscp(model, image, fixtures):
    """With CSCP off the output is the CLIP map (the released code always runs CSCP: a stage check only)."""
    model.use_cscp = False
    try:
        with torch.no_grad():
            q = model(image)
    finally:
        model.use_cscp = True
    expected = as_distribution(fixtures["stages"]["maps.clip"][None])
    _close(q[0], expected[0], "CLIP map as a distribution")


# ---- converter error paths --------------------------------------------------------------------------------

def _released():
    return (torch.load(CLIP_FILE, weights_only=True), torch.load(DINO_FILE, weights_only=True))


def _fresh_model():
    from rsseg.models.sdci.model import SDCI

    return SDCI(clip_pretrained=None, clip_config=PARITY_CLIP, clip_size=56, dino_pretrained=False,
                dino_config=PARITY_DINO, dino_size=70, knn=5)


def test_convert_state_dict_covers_the_whole_model():
    clip, dino = _released()
    converted = convert_state_dict(clip, dino)
    assert set(converted) == set(_fresh_model().state_dict())


def test_missing_clip_key_is_named(tmp_path):
    clip, _ = _released()
    del clip["visual.ln_post.weight"]
    torch.save(clip, tmp_path / "clip.pt")
    with pytest.raises(ValueError, match=r"clip\.pt.*missing parameters for visual\.ln_post\.weight"):
        load_released_checkpoint(_fresh_model(), tmp_path / "clip.pt", DINO_FILE)


def test_unexpected_dino_key_is_named(tmp_path):
    _, dino = _released()
    dino["blocks.7.norm1.weight"] = torch.ones(32)
    torch.save(dino, tmp_path / "dino.pth")
    with pytest.raises(ValueError, match=r"dino\.pth.*unexpected parameters encoder\.layer\.7\.norm1\.weight"):
        load_released_checkpoint(_fresh_model(), CLIP_FILE, tmp_path / "dino.pth")


def test_shape_mismatch_is_named_and_nothing_loads(tmp_path):
    _, dino = _released()
    dino["pos_embed"] = torch.zeros(1, 10, 32)
    torch.save(dino, tmp_path / "dino.pth")
    model = _fresh_model()
    before = model.clip.visual.proj.clone()
    with pytest.raises(ValueError, match=r"shape mismatch.*embeddings\.position_embeddings"):
        load_released_checkpoint(model, CLIP_FILE, tmp_path / "dino.pth")
    assert torch.equal(model.clip.visual.proj, before)  # CLIP was not loaded either


def test_unknown_keys_are_named():
    clip, dino = _released()
    with pytest.raises(ValueError, match="unknown OpenAI CLIP keys: visual_head.weight"):
        convert_clip_state_dict({**clip, "visual_head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unknown DINOv2 hub keys: blocks\.0\.mlp\.w12\.weight"):
        convert_dino_state_dict({**dino, "blocks.0.mlp.w12.weight": torch.zeros(1)})


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_released_checkpoint(_fresh_model(), CLIP_FILE, tmp_path / "nowhere.pth")
