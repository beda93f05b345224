"""Parity of rsseg's D2LS (released switches) with the released forward pass, stage by stage.

The fixtures (tests/data/parity/d2ls/README.md) come from the released ``DynamicDictionaryLearning`` in
eval mode on a tiny configuration of the same classes; the weights are loaded here through
``rsseg.models.released.d2ls``. rsseg's defaults differ from the released code on purpose: the paper's
Eq. 16 (``head="interpolate"``, no final dictionary→image attention) and the aggregator folded before the
interpolation (the same E_0 with fewer MACs). The parity test pins the released behaviour behind
``head="pixel_shuffle", final_token_attention=True``, with the aggregator folded and not (docs/methods.md §1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsseg.models import D2LS
from rsseg.models.released.d2ls import NEVER_USED, convert_state_dict, load_released_checkpoint

DATA = Path(__file__).parent / "data" / "parity" / "d2ls"
TOL = 1e-5


@pytest.fixture(scope="module")
def weights() -> dict:
    return torch.load(DATA / "weights.pt", weights_only=True)


@pytest.fixture(scope="module")
def out() -> dict:
    return torch.load(DATA / "outputs.pt", weights_only=True)["outputs"]


def _build(config: dict, **overrides) -> D2LS:
    kwargs = dict(
        pretrained=False, drop_path_rate=0.0, embed_dim=config["embed_dim"], num_heads=config["num_heads"],
        num_stages=config["num_stages"], dictionary_ratio=config["query_ratio"], head="pixel_shuffle",
        final_token_attention=True, backbone="convnext_base",
        backbone_kwargs={"depths": config["depths"], "dims": config["widths"]},
    )
    return D2LS(config["num_classes"], **{**kwargs, **overrides})


def _released_net(weights: dict, **overrides) -> D2LS:
    net = _build(weights["config"], **overrides)
    net.load_state_dict(convert_state_dict(weights["state_dict"]), strict=True)
    return net.eval()


def _close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    delta = (actual - expected).abs().max().item()
    assert delta <= TOL, f"{name}: max |Δ| = {delta:.3g} > {TOL}"


def _tokens(image_map: torch.Tensor) -> torch.Tensor:
    return image_map.flatten(2).transpose(1, 2)


@torch.no_grad()
def test_backbone_stages(weights, out):
    net = _released_net(weights)
    for i, feature in enumerate(net.backbone(out["input"])):
        _close(feature, out[f"backbone_c{i + 1}"], f"backbone C{i + 1}")


@pytest.mark.parametrize("fold", [True, False])
@torch.no_grad()
def test_fused_features(weights, out, fold):
    """E_0 (Eq. 9–10) with the released reverse-order concatenation mapped onto rsseg's column order."""
    net = _released_net(weights, fold_aggregator=fold)
    fused, f4 = net.encoder(out["input"])
    _close(fused, out["fused"], "E_0")
    _close(f4, out["backbone_c4"], "F_4")


@torch.no_grad()
def test_positional_encoding(weights, out):
    net = _released_net(weights)
    h, w = out["fused"].shape[-2:]
    _close(net.positions(h, w), _tokens(out["positional_encoding"]), "positional encoding")


@torch.no_grad()
def test_dictionaries(weights, out):
    """A (Eq. 12–13), the static dictionary (Eq. 11) and the dynamic one (Eq. 14)."""
    net = _released_net(weights)
    _close(net.generator.modulator(out["backbone_c4"]), out["modulator_weights"], "A")
    static, dynamic = net.generator(out["backbone_c4"])
    _close(static, out["static_dictionary"], "D_s")
    _close(dynamic, out["dynamic_dictionary"], "D_d")


@torch.no_grad()
def test_interaction_stages(weights, out):
    """Each stage of Eq. 15 from the released previous stage's outputs, then the final attention."""
    net = _released_net(weights)
    dictionary, pe = out["dynamic_dictionary"], _tokens(out["positional_encoding"])
    tokens, image = dictionary, _tokens(out["fused"])
    for i, stage in enumerate(net.interactor.stages):
        new_tokens, new_image = stage(tokens, image, dictionary, pe)
        _close(new_tokens, out[f"stage{i}_tokens"], f"stage {i} dictionary")
        _close(new_image, out[f"stage{i}_image"], f"stage {i} image")
        tokens, image = out[f"stage{i}_tokens"], out[f"stage{i}_image"]
    final_tokens, final_image = net.interactor(dictionary, _tokens(out["fused"]), pe)
    _close(final_tokens, out["final_tokens"], "final dictionary→image attention")
    _close(final_image, image, "image after the stages")


@torch.no_grad()
def test_head(weights, out):
    """The pixel-shuffle head and the dictionary MLP of Eq. 16, then the logits."""
    net = _released_net(weights)
    b, c, h, w = out["fused"].shape
    image = out[f"stage{len(net.interactor.stages) - 1}_image"].transpose(1, 2).reshape(b, c, h, w)
    _close(net.head.upscale(image), out["head_upscaled"], "upsampled image")
    _close(net.head.dict_mlp(out["final_tokens"]), out["head_dict_weights"], "dictionary MLP")
    _close(net.head(out["final_tokens"], image, out["input"].shape[-2:]), out["logits"], "head logits")


@pytest.mark.parametrize("fold", [True, False])
@torch.no_grad()
def test_end_to_end(weights, out, fold):
    """Inference (dynamic branch) and the training step's static-branch logits (Eq. 1)."""
    net = _released_net(weights, fold_aggregator=fold)
    _close(net(out["input"]), out["logits"], "logits")
    branches = net.forward_branches(out["input"])
    _close(branches.dynamic_logits, out["logits"], "dynamic logits")
    _close(branches.static_logits, out["static_logits"], "static logits")


def _save_ckpt(state: dict, path: Path, prefix: str = "net.") -> Path:
    torch.save({"state_dict": {prefix + k: v for k, v in state.items()}, "epoch": 29, "global_step": 1}, path)
    return path


@torch.no_grad()
def test_lightning_checkpoint_loads(weights, out, tmp_path):
    """The GeoSeg Lightning format (``net.`` prefix); the never-used block parameters are dropped."""
    assert any(NEVER_USED.match(k) for k in weights["state_dict"])
    assert not any("self_attn" in k or ".mlp.lin" in k for k in convert_state_dict(weights["state_dict"]))
    net = load_released_checkpoint(_build(weights["config"]), _save_ckpt(weights["state_dict"], tmp_path / "d2ls.ckpt"))
    _close(net.eval()(out["input"]), out["logits"], "logits after loading the .ckpt")
    bare_path = _save_ckpt(weights["state_dict"], tmp_path / "bare.ckpt", prefix="")
    bare = load_released_checkpoint(_build(weights["config"]), bare_path)
    _close(bare.eval()(out["input"]), out["logits"], "logits after loading a bare state dict")


def test_missing_key_is_named(weights, tmp_path):
    state = {k: v for k, v in weights["state_dict"].items() if k != "aggregator.weight"}
    path = _save_ckpt(state, tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match=r"missing.ckpt: missing parameters for encoder\.aggregator\.weight"):
        load_released_checkpoint(_build(weights["config"]), path)


def test_unknown_key_is_named(weights, tmp_path):
    state = {**weights["state_dict"], "decoder.output_head.weight": torch.zeros(6, 6)}
    path = _save_ckpt(state, tmp_path / "unknown.ckpt")
    with pytest.raises(ValueError, match=r"unknown D2LS keys .*decoder\.output_head\.weight"):
        load_released_checkpoint(_build(weights["config"]), path)


def test_shape_mismatch_is_named(weights, tmp_path):
    path = _save_ckpt(weights["state_dict"], tmp_path / "shape.ckpt")
    with pytest.raises(ValueError, match=r"shape mismatch .*generator\.static\.weight \(6, 32\) vs \(7, 32\)"):
        load_released_checkpoint(_build({**weights["config"], "num_classes": 7}), path)


def test_fewer_stages_in_the_model(weights, tmp_path):
    path = _save_ckpt(weights["state_dict"], tmp_path / "stages.ckpt")
    with pytest.raises(ValueError, match=r"unexpected parameters interactor\.stages\.1\."):
        load_released_checkpoint(_build({**weights["config"], "num_stages": 1}), path)


@pytest.mark.parametrize("switch", [{"head": "interpolate"}, {"final_token_attention": False}])
def test_paper_switches_are_refused(weights, tmp_path, switch):
    path = _save_ckpt(weights["state_dict"], tmp_path / "paper.ckpt")
    with pytest.raises(ValueError, match="head='pixel_shuffle', final_token_attention=True"):
        load_released_checkpoint(_build(weights["config"], **switch), path)


def test_not_a_checkpoint(weights, tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"epoch": 3, "state_dict": None}, path)
    with pytest.raises(ValueError, match="other.ckpt: not a D2LS checkpoint"):
        load_released_checkpoint(_build(weights["config"]), path)
