"""SDCI's branches, CAF and BCDR on tiny random CLIP/DINO models of the real classes (CPU, seconds)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsseg.models.sdci.fusion import (
    align_attention,
    cross_fuse,
    diffuse,
    grid_resample,
    knn_transition,
    zero_shot_scores,
)
from rsseg.models.sdci.semantic import (
    SemanticBranch,
    clip_tokenizer,
    fuse_attention,
    load_clip,
    released_prior,
    sinkhorn_pass,
    text_embeddings,
)
from rsseg.models.sdci.structural import StructuralBranch, load_dino
from tests.sdci_tiny import TINY_CLIP, TINY_DINO_V1, TINY_DINO_V2, TINY_SDCI


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip(config=TINY_CLIP)


# --- semantic branch ---------------------------------------------------------------------------------
def test_semantic_blocks_reproduce_open_clip(clip):
    """The branch's hand-run blocks (which expose Eq. 3's maps) are open_clip's own forward."""
    branch = SemanticBranch(clip)
    image = torch.randn(2, 3, 28, 28)
    x, grid = branch._embed(image)
    torch.testing.assert_close(x, clip.visual._embeds(image))
    reference = clip.visual.transformer(x)
    for block in clip.visual.transformer.resblocks:
        x, attention, _ = branch._block(block, x)
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))
    torch.testing.assert_close(x, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["paper", "released"])
def test_semantic_outputs_on_a_non_native_grid(clip, fusion):
    out = SemanticBranch(clip, fusion)(torch.randn(2, 3, 42, 56))  # native grid 2×2; here 3×4
    assert out["grid"] == (3, 4)
    assert out["features"].shape == (2, 3, 12, 32)  # 3 levels (blocks) of 12 patch tokens in the 32-d joint space
    assert out["attention"].shape == (2, 12, 12)


def test_last_level_is_the_fused_attention_on_the_last_values(clip):
    """Eq. 5: F_N = Norm(ReLU(Sym(A_avg) − μ)) · V_N, then out-projection, ln_post and proj."""
    branch = SemanticBranch(clip)
    image = torch.randn(1, 3, 28, 28)
    x, _ = branch._embed(image)
    blocks = clip.visual.transformer.resblocks
    maps = []
    for block in blocks[:-1]:
        x, attention, _ = branch._block(block, x)
        maps.append(attention)
    last = blocks[-1]
    prior = fuse_attention(sum(maps), len(maps))
    values = branch._heads(last, last.ln_1(x), slice(64, 96))
    expected = last.attn.out_proj((prior @ values).transpose(1, 2).flatten(-2))
    expected = clip.visual.ln_post(expected) @ clip.visual.proj
    torch.testing.assert_close(branch(image)["features"][:, -1], expected[:, 1:], atol=1e-5, rtol=1e-5)


def test_every_level_is_the_fused_attention_on_its_normalised_tokens():
    """Every level, not only the last, against an independent computation from open_clip's own modules.

    Released SDCI (``forward_transformer`` with ``fuse_feature=True``): the features are ``ln_1(x)`` of every one
    of the first N−1 layers (block ℓ's own ln_1 on block ℓ's input tokens) plus the final x, and each passes
    through the LAST block's ln_1 before that block's attention (Eq. 5 here: no residual, no MLP), then
    ``ln_post`` and ``proj``. The LayerNorm affines are randomised so that a skipped or a swapped ln_1 fails.
    """
    torch.manual_seed(1)
    model = load_clip(config=TINY_CLIP)
    with torch.no_grad():
        for module in model.visual.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.3)
    branch = SemanticBranch(model)
    image = torch.randn(2, 3, 28, 28)
    visual = model.visual
    blocks = visual.transformer.resblocks
    last, width = blocks[-1], TINY_CLIP["vision_cfg"]["width"]
    with torch.no_grad():
        x = visual._embeds(image)  # open_clip's own patch + class + position embedding and ln_pre
        tokens, maps = [], []
        for block in blocks[:-1]:
            normed = block.ln_1(x)
            tokens.append(last.ln_1(normed))  # normalised twice: its own ln_1, then the last block's
            _, attention = block.attn(normed, normed, normed, need_weights=True, average_attn_weights=False)
            maps.append(attention)
            x = block(x)  # open_clip's own block forward
        tokens.append(last.ln_1(x))
        prior = fuse_attention(sum(maps), len(maps))
        heads = last.attn.num_heads
        expected = []
        for level in tokens:
            v = F.linear(level, last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:])
            v = v.unflatten(-1, (heads, -1)).transpose(1, 2)
            mixed = last.attn.out_proj((prior @ v).transpose(1, 2).flatten(-2))
            expected.append(visual.ln_post(mixed) @ visual.proj)
        expected = torch.stack(expected, 1)[:, :, 1:]
        features = branch(image)["features"]
    assert features.shape == expected.shape == (2, len(blocks), 4, TINY_CLIP["embed_dim"])
    for level in range(len(blocks)):
        torch.testing.assert_close(features[:, level], expected[:, level], atol=1e-5, rtol=1e-5)


def test_fused_attention_on_a_hand_case():
    """Eq. 4–5 by hand: two 3×3 layer maps → average, symmetrise, subtract the mean 1/3, ReLU, ℓ1 rows."""
    a1 = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    a2 = torch.tensor([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.3, 0.1, 0.6]])
    # average [[.7,.2,.1],[.3,.5,.2],[.2,.1,.7]]; symmetric [[.7,.25,.15],[.25,.5,.15],[.15,.15,.7]]; mean 1/3
    shifted = torch.tensor([[0.7 - 1 / 3, 0, 0], [0, 0.5 - 1 / 3, 0], [0, 0, 0.7 - 1 / 3]])
    expected = shifted / shifted.sum(-1, keepdim=True)
    torch.testing.assert_close(fuse_attention(a1 + a2, 2), expected)
    assert torch.equal(fuse_attention(a1 + a2, 2), torch.eye(3))  # here only the diagonal survives


def test_released_prior_sinkhorn_passes():
    torch.manual_seed(0)
    a = torch.rand(2, 5, 5)
    balanced = a
    for _ in range(200):
        balanced = sinkhorn_pass(balanced)
    torch.testing.assert_close(balanced.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(balanced.sum(-2), torch.ones(2, 5), atol=1e-5, rtol=0)
    prior = released_prior(sinkhorn_pass(a))
    sym = (sinkhorn_pass(a) + sinkhorn_pass(a).transpose(-1, -2)) / 2
    expected = (sym - sym.mean(-2, keepdim=True)).clamp_min(0)
    torch.testing.assert_close(prior, expected / expected.sum(-1, keepdim=True))


def test_text_embeddings_average_templates_then_names(clip):
    tokenizer = clip_tokenizer("ViT-L-14")
    templates = ["a photo of a {}.", "an aerial view of a {}."]
    bank = text_embeddings(clip, tokenizer, [["road"], ["tree", "trees"]], templates)

    def encode(name):
        with torch.no_grad():
            return F.normalize(F.normalize(clip.encode_text(tokenizer([t.format(name) for t in templates])), dim=-1)
                               .mean(0), dim=-1)

    torch.testing.assert_close(bank[0], encode("road"))
    torch.testing.assert_close(bank[1], F.normalize((encode("tree") + encode("trees")) / 2, dim=0))


# --- structural branch -------------------------------------------------------------------------------
@pytest.mark.parametrize("config,size,prefix", [(TINY_DINO_V2, 70, 5), (TINY_DINO_V1, 48, 1)])
def test_structural_branch_drops_cls_and_registers(config, size, prefix):
    torch.manual_seed(0)
    dino = load_dino("tiny", pretrained=False, config=config)
    branch = StructuralBranch(dino)
    image = torch.randn(2, 3, size, size)
    asked = []  # the branch keeps the last layer's attention only, not all N layers' (output_attentions)
    spy = dino.register_forward_pre_hook(lambda m, args, kwargs: asked.append(kwargs.get("output_attentions")),
                                         with_kwargs=True)
    out = branch(image)
    spy.remove()
    assert asked == [None]
    grid = size // config["patch_size"]
    assert out["grid"] == (grid, grid) and branch.prefix == prefix
    extra = {"interpolate_pos_encoding": True} if config["model_type"] == "vit" else {}
    reference = dino(pixel_values=image, output_attentions=True, **extra)
    torch.testing.assert_close(out["features"][:, -1], reference.last_hidden_state[:, prefix:])  # Eq. 7
    assert out["features"].shape == (2, 2, grid * grid, 32)
    torch.testing.assert_close(out["attention"], reference.attentions[-1].mean(1)[:, prefix:, prefix:])


def test_structural_branch_without_recordable_attention_asks_for_all_layers():
    """transformers < 5 declares no attention module to hook: the branch falls back to ``output_attentions``
    and gives the same result."""
    torch.manual_seed(0)
    dino = load_dino("tiny", pretrained=False, config=TINY_DINO_V2)
    image = torch.randn(1, 3, 70, 70)
    hooked = StructuralBranch(dino)(image)
    dino._can_record_outputs = {}
    asked = []
    dino.register_forward_pre_hook(lambda m, args, kwargs: asked.append(kwargs.get("output_attentions")),
                                   with_kwargs=True)
    fallback = StructuralBranch(dino)(image)
    assert asked == [True]
    torch.testing.assert_close(fallback["attention"], hooked["attention"])
    torch.testing.assert_close(fallback["features"], hooked["features"])


# --- CAF ---------------------------------------------------------------------------------------------
def test_zero_shot_scores_keep_the_classes_after_a_softmax_over_all_rows():
    features = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # two classes and a distractor
    scores = zero_shot_scores(features, text, keep=2, logit_scale=10.0)
    cos = torch.tensor([[1.0, 0.0, 1 / math.sqrt(2)], [0.0, 1.0, 1 / math.sqrt(2)]])
    torch.testing.assert_close(scores[0], torch.softmax(10 * cos, -1)[:, :2])


def test_flat_alignment_is_a_bilinear_resize_of_the_matrix_on_a_hand_case():
    """``align: flat`` = docs/methods.md §4.5 step 3's ``CLIP.resample``: "bilinear resize of the N×N matrix in
    both axes". Hand case: A[i, j] = i + 10·j (n = 4, a 2×2 grid) resized to 16×16 (a 4×4 grid). Bilinear
    resizing of the matrix reproduces this linear ramp along each matrix axis, at the half-pixel source
    coordinate s(I) = (I + 0.5)·4/16 − 0.5 clamped to [0, 3] (PyTorch's align_corners=False; docs/methods.md
    does not say which the released code uses), ignoring the token grids entirely."""
    index = torch.arange(4.0)
    attention = (index[:, None] + 10 * index[None, :]).unsqueeze(0)
    coord = ((torch.arange(16.0) + 0.5) / 4 - 0.5).clamp(0, 3)
    expected = (coord[:, None] + 10 * coord[None, :]).unsqueeze(0)
    torch.testing.assert_close(align_attention(attention, (2, 2), (4, 4), "flat"), expected)
    # and 16×16 → 4×4 back (an exact 4× bilinear downsample of a linear ramp, no antialiasing) recovers A
    torch.testing.assert_close(align_attention(expected, (4, 4), (2, 2), "flat")[:, 1:3, 1:3],
                               attention[:, 1:3, 1:3])


def test_grid_alignment_moves_attention_with_the_grid():
    """A token attending to itself on a 2×2 grid still attends to the same image region on a 4×4 grid,
    and each row keeps its attention mass."""
    attention = torch.eye(4).unsqueeze(0)
    aligned = align_attention(attention, (2, 2), (4, 4), "grid")
    assert aligned.shape == (1, 16, 16)
    torch.testing.assert_close(aligned.sum(-1), torch.full((1, 16), 1.0))
    top_left = aligned[0, 0].view(4, 4)  # the query at the top-left corner
    assert top_left[:2, :2].sum() > 0.5 and top_left[2:, 2:].sum() < 0.1
    uniform = align_attention(torch.full((1, 4, 4), 0.25), (2, 2), (3, 3), "grid")
    torch.testing.assert_close(uniform, torch.full((1, 9, 9), 1 / 9))
    flat = align_attention(attention, (2, 2), (3, 3), "flat")
    torch.testing.assert_close(flat, F.interpolate(attention[:, None], size=(9, 9), mode="bilinear")[:, 0])
    assert align_attention(attention, (2, 2), (2, 2)) is attention


def test_cross_fusion_by_hand():
    """Eq. 8 with A_own = I and A_other = uniform: S' = S_N + mean(S_N) + mean of the lower levels."""
    levels = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.2, 0.8], [0.6, 0.4]]]])  # B=1, N=2, hw=2, K=2
    own, other = torch.eye(2)[None], torch.full((1, 2, 2), 0.5)
    fused = cross_fuse(levels, own, other, weight=1.0, last_threshold=0.0)
    last = levels[0, 1]
    torch.testing.assert_close(fused[0], last + last.mean(0, keepdim=True) + levels[0, 0])
    # the code's threshold: scores under 0.2 × the class maximum (0.8 → 0.16, 0.6 → 0.12) are zeroed first
    thresholded = cross_fuse(torch.tensor([[[[0.0, 0.0]] * 2, [[0.1, 0.8], [0.6, 0.1]]]]), torch.eye(2)[None],
                             torch.zeros(1, 2, 2), last_threshold=0.2)
    torch.testing.assert_close(thresholded[0], torch.tensor([[0.0, 0.8], [0.6, 0.0]]))


# --- BCDR --------------------------------------------------------------------------------------------
def dense_transition(features, k, temperature):
    unit = F.normalize(features, dim=-1)
    similarity = (unit @ unit.T).numpy().astype(np.float64)
    np.fill_diagonal(similarity, -np.inf)
    dense = np.zeros_like(similarity)
    for row, values in enumerate(similarity):
        keep = np.argsort(-values)[:k]
        dense[row, keep] = np.exp(values[keep] / temperature)
    return dense / dense.sum(1, keepdims=True)


def test_knn_transition_matches_the_dense_definition():
    torch.manual_seed(0)
    features = torch.randn(2, 20, 8)
    indices, weights = knn_transition(features, k=5, temperature=0.07)
    for b in range(2):
        dense = np.zeros((20, 20))
        np.put_along_axis(dense, indices[b].numpy(), weights[b].double().numpy(), axis=1)
        np.testing.assert_allclose(dense, dense_transition(features[b], 5, 0.07), atol=1e-6)
        assert not (indices[b] == torch.arange(20)[:, None]).any()  # no self-loops


def test_diffusion_equals_the_closed_form_of_its_recursion():
    """Eq. 13 from S⁽⁰⁾ = S': S⁽ᵀ⁾ = (αT)ᵀ S' + (1 − α) Σ_{t<T} (αT)ᵗ S'."""
    torch.manual_seed(0)
    features, start = torch.randn(1, 15, 6), torch.rand(1, 15, 3)
    indices, weights = knn_transition(features, k=4, temperature=0.5)
    dense = np.zeros((15, 15))
    np.put_along_axis(dense, indices[0].numpy(), weights[0].double().numpy(), axis=1)
    alpha, steps = 0.9, 40
    walk = alpha * dense
    expected = np.linalg.matrix_power(walk, steps) @ start[0].double().numpy()
    expected += (1 - alpha) * sum(np.linalg.matrix_power(walk, t) for t in range(steps)) @ start[0].double().numpy()
    np.testing.assert_allclose(diffuse(start, indices, weights, alpha, steps)[0].double().numpy(), expected, atol=1e-5)


def test_grid_resample_is_bilinear_on_the_token_grid():
    scores = torch.arange(4.0).view(1, 4, 1)  # 2×2 grid, one class
    resampled = grid_resample(scores, (2, 2), (4, 4))
    reference = F.interpolate(torch.arange(4.0).view(1, 1, 2, 2), size=(4, 4), mode="bilinear")
    torch.testing.assert_close(resampled, reference.flatten(2).transpose(1, 2))


# --- the whole model ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sdci():
    from rsseg.models.sdci.model import SDCI

    torch.manual_seed(0)
    model = SDCI(**TINY_SDCI)
    model.set_text([["road"], ["building"], ["tree"]], ["an aerial view of a {}."], [["other"]])
    return model


def test_sdci_returns_distributions_at_the_input_size(sdci):
    image = torch.rand(2, 3, 40, 48)
    probabilities = sdci(image)
    assert probabilities.shape == (2, 3, 40, 48)
    assert (probabilities >= 0).all()
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2, 40, 48), atol=1e-5, rtol=0)
    torch.testing.assert_close(sdci(image), probabilities)  # deterministic
    scores = sdci.branch_scores(image)
    assert scores["clip_grid"] == (5, 5) and scores["dino_grid"] == (4, 5)  # BCDR swapped the grids
    assert scores["clip"].shape == (2, 25, 3) and scores["dino"].shape == (2, 20, 3)


def test_sdci_ablations_run(sdci):
    image = torch.rand(1, 3, 32, 32)
    for switch in ({"use_cscp": False}, {"use_bcdr": False}, {"caf_weight": 0.0}, {"diffusion_half": True}):
        saved = {k: getattr(sdci, k) for k in switch}
        try:
            for key, value in switch.items():
                setattr(sdci, key, value)
            out = sdci(image)
            assert out.shape == (1, 3, 32, 32)
            torch.testing.assert_close(out.sum(1), torch.ones(1, 32, 32), atol=1e-5, rtol=0)
        finally:
            for key, value in saved.items():
                setattr(sdci, key, value)


def test_sdci_v1_runs_with_dino_vit_b8_layout():
    """SDCI-v1: DINO v1's ViT (transformers ``vit``, patch 8, [CLS] only) as the structural branch."""
    from rsseg.models.sdci.model import SDCI

    model = SDCI(**{**TINY_SDCI, "dino_version": "v1", "dino_config": TINY_DINO_V1, "dino_size": 48})
    model.set_text([["road"], ["tree"]], ["{}"], [["other"]])
    scores = model.branch_scores(torch.rand(1, 3, 32, 32))
    assert scores["clip_grid"] == (6, 6)  # CLIP's scores diffused on DINO v1's 48/8 grid
    out = model(torch.rand(1, 3, 32, 32))
    torch.testing.assert_close(out.sum(1), torch.ones(1, 32, 32), atol=1e-5, rtol=0)


def test_sdci_refuses_mismatched_feature_widths():
    from rsseg.models.sdci.model import SDCI

    wide = {**TINY_DINO_V2, "hidden_size": 48, "num_attention_heads": 2}
    model = SDCI(**{**TINY_SDCI, "dino_config": wide})
    model.set_text([["road"], ["tree"]], ["{}"])
    with pytest.raises(ValueError, match="DINO features are 48-d"):
        model(torch.rand(1, 3, 32, 32))
