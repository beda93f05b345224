"""LAVT's released forward pass (yz93/LAVT-RIS) reproduced by rsseg's LAVT, stage by stage.

Fixtures (tests/data/parity/lavt/README.md): a tiny released LAVT (Swin widths 6..48, window 4, two PWAM heads,
padding in every stage) with random weights in the released naming, fixed random word features, and every
stage's output computed by the released code. The weights reach rsseg through
``rsseg.models.released.lavt`` (the real file format: a ``.pth`` with ``model`` and ``bert_model``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from rsseg.models.danet import DANet
from rsseg.models.lavt import TextFeatures
from rsseg.models.released.lavt import convert_state_dict, load_released_checkpoint

DATA = Path(__file__).parent / "data" / "parity" / "lavt"
STAGE_KEYS = ("blocks", "fused", "gated", "out")


@pytest.fixture(scope="module")
def io() -> dict:
    return torch.load(DATA / "io.pt", weights_only=True)


@pytest.fixture(scope="module")
def released() -> dict:
    return torch.load(DATA / "weights.pt", weights_only=True)


def tiny_lavt(io: dict, **overrides) -> DANet:
    """rsseg's LAVT (DANet without RAAM) in the fixtures' configuration; the text encoder is a tiny BERT."""
    bert = {k.removeprefix("config.bert."): v for k, v in io.items() if k.startswith("config.bert.")}
    swin = dict(embed_dim=io["config.embed_dim"], depths=io["config.depths"], num_heads=io["config.num_heads"],
                window_size=io["config.window_size"])
    heads = set(io["config.mha"])
    assert len(heads) == 1
    kwargs = dict(pretrained=False, img_size=64, drop_path_rate=0.3, backbone_kwargs=swin, text_pretrained=False,
                  text_config={"model_type": "bert", **bert}, pwam_heads=heads.pop(),
                  decoder_channels=4 * io["config.embed_dim"], agent_alignment=False)
    return DANet(**{**kwargs, **overrides}).eval()


def save_release(path: Path, model: dict, bert: dict | None) -> Path:
    """A file as LAVT's train.py writes it (its ``args`` is an argparse.Namespace)."""
    content = {"model": model, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
               "args": argparse.Namespace(model="lavt", swin_type="tiny", window12=False, mha="2-2-2-2")}
    if bert is not None:
        content["bert_model"] = bert
    torch.save(content, path)
    return path


@pytest.fixture(scope="module")
def loaded(io, released, tmp_path_factory) -> DANet:
    path = save_release(tmp_path_factory.mktemp("lavt") / "model_best_refcoco.pth", released["model"],
                        released["bert_model"])
    return load_released_checkpoint(tiny_lavt(io), path)


def run(net: DANet, io: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every fixture tensor from rsseg: stage tensors through hooks, decoder and logits from the submodules."""
    net = net.to(dtype)
    text = TextFeatures(io["words"].to(dtype), io["words"][:, 0].to(dtype), io["word_mask"].bool())
    encoder, got, hooks = net.encoder, {}, []
    for i in range(4):
        hooks.append(encoder.fusions[i].register_forward_pre_hook(
            lambda m, args, i=i: got.__setitem__(f"stage{i}.blocks", args[0])))
        hooks.append(encoder.fusions[i].register_forward_hook(
            lambda m, args, out, i=i: got.__setitem__(f"stage{i}.fused", out[0])))
        if i:  # stage i's patch merging reads the previous stage's gated features
            hooks.append(encoder.stages[i].downsample.register_forward_pre_hook(
                lambda m, args, i=i: got.__setitem__(f"stage{i - 1}.gated", args[0].flatten(1, 2))))
    net.text_encoder.forward = lambda input_ids, attention_mask: text  # the fixtures' word features
    try:
        with torch.no_grad():
            out = net(io["image"].to(dtype), io["input_ids"], io["word_mask"])
            mm = got["stage3.fused"]  # the last gated x feeds nothing: recompute it from the last gate
            got["stage3.gated"] = got["stage3.blocks"] + encoder.gates[3](mm) * mm
            got |= {f"stage{i}.out": f for i, f in enumerate(out.features)}
            got["decoder"] = net.decoder(out.features)
            got["logits4"] = net.classifier(got["decoder"])
            got["logits"] = out.logits
    finally:
        del net.text_encoder.forward
        for hook in hooks:
            hook.remove()
        net.float()
    return got


def expected(io: dict, key: str) -> torch.Tensor:
    """The released tensor in rsseg's layout: the 2-channel logits as one target-minus-background logit."""
    if key in ("logits4", "logits"):
        return io[key][:, 1:] - io[key][:, :1]
    return io[key]


KEYS = [f"stage{i}.{k}" for i in range(4) for k in STAGE_KEYS] + ["decoder", "logits4", "logits"]


def test_float64_forward_equals_the_released_forward_stage_by_stage(loaded, io):
    """The fixtures are the released forward of these float32 weights computed in float64: in float64 rsseg
    must agree up to the fixtures' float32 storage."""
    got = run(loaded, io, torch.float64)
    for key in KEYS:
        ref = expected(io, key).double()
        delta = (got[key].reshape(ref.shape) - ref).abs().max().item()
        assert delta <= 1e-5, f"{key}: max |Δ| = {delta:.2e}"


def test_float32_forward_equals_the_released_forward_stage_by_stage(loaded, io):
    """In float32, max |Δ| ≤ 1e-5 per unit of the tensor's scale: PWAM's InstanceNorms and the stage
    LayerNorms over 6-48 channels amplify float32 rounding to ~1e-5 on the O(4) normalised outputs (the
    released float32 run differs from the exact forward by as much)."""
    got = run(loaded, io, torch.float32)
    for key in KEYS:
        ref = expected(io, key)
        delta = (got[key].reshape(ref.shape) - ref).abs().max().item()
        assert delta <= 1e-5 * max(1.0, ref.abs().max().item()), f"{key}: max |Δ| = {delta:.2e}"


def test_text_encoder_weights_give_the_released_bert_word_features(loaded, io):
    with torch.no_grad():
        words = loaded.text_encoder(io["input_ids"], io["word_mask"]).words
    torch.testing.assert_close(words, io["bert_hidden"], atol=1e-5, rtol=0)


def test_lavt_one_layout_and_pooler_keys_load_the_same_weights(loaded, io, released, tmp_path):
    """``lavt_one`` keeps BERT inside ``model`` as ``text_encoder.*``; a saved pooler is dropped (LAVT's is None)."""
    model = dict(released["model"]) | {f"text_encoder.{k}": v for k, v in released["bert_model"].items()}
    model["text_encoder.pooler.dense.weight"] = torch.zeros(16, 16)
    net = load_released_checkpoint(tiny_lavt(io), save_release(tmp_path / "lavt_one.pth", model, None))
    reference = loaded.state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, reference[key]), key


# --- converter errors ---------------------------------------------------------------------------------


def test_missing_key_is_named(io, released, tmp_path):
    model = dict(released["model"])
    del model["backbone.layers.1.fusion.image_lang_att.f_key.0.weight"]
    path = save_release(tmp_path / "missing.pth", model, released["bert_model"])
    with pytest.raises(ValueError, match=r"missing\.pth: missing parameters for encoder\.fusions\.1\.key\.weight"):
        load_released_checkpoint(tiny_lavt(io), path)


def test_missing_text_encoder_is_named(io, released, tmp_path):
    path = save_release(tmp_path / "no_bert.pth", released["model"], None)
    with pytest.raises(ValueError, match=r"no_bert\.pth: missing parameters for .*text_encoder\.model\.embeddings"):
        load_released_checkpoint(tiny_lavt(io), path)


def test_unexpected_key_is_named(io, released, tmp_path):
    model = dict(released["model"]) | {"backbone.layers.0.fusion.extra.0.weight": torch.zeros(1)}
    path = save_release(tmp_path / "extra.pth", model, released["bert_model"])
    with pytest.raises(ValueError, match=r"extra\.pth: unknown LAVT keys: backbone\.layers\.0\.fusion\.extra"):
        load_released_checkpoint(tiny_lavt(io), path)


def test_extra_swin_block_is_unexpected(io, released, tmp_path):
    model = dict(released["model"]) | {"backbone.layers.3.blocks.2.norm1.weight": torch.ones(48)}
    path = save_release(tmp_path / "deeper.pth", model, released["bert_model"])
    with pytest.raises(ValueError, match=r"unexpected parameters encoder\.stages\.3\.blocks\.2\.norm1\.weight"):
        load_released_checkpoint(tiny_lavt(io), path)


def test_shape_mismatch_is_named(io, released, tmp_path):
    path = save_release(tmp_path / "wide.pth", released["model"], released["bert_model"])
    with pytest.raises(ValueError, match=r"wide\.pth: shape mismatch .*encoder\.fusions\.0\.key\.weight"):
        load_released_checkpoint(tiny_lavt(io, text_config={"model_type": "bert", "hidden_size": 32,
                                                                  "num_hidden_layers": 1, "num_attention_heads": 2,
                                                                  "intermediate_size": 32, "vocab_size": 50,
                                                                  "max_position_embeddings": 24}), path)


def test_window_size_mismatch_is_an_error_not_a_resize(io, released, tmp_path):
    path = save_release(tmp_path / "window.pth", released["model"], released["bert_model"])
    net = tiny_lavt(io, backbone_kwargs=dict(embed_dim=6, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7))
    with pytest.raises(ValueError, match=r"window\.pth: shape mismatch .*relative_position_bias_table"):
        load_released_checkpoint(net, path)


def test_not_a_lavt_checkpoint(io, released, tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(released["model"], path)
    with pytest.raises(ValueError, match=r"plain\.pth: not a LAVT checkpoint"):
        load_released_checkpoint(tiny_lavt(io), path)


def test_convert_state_dict_maps_the_classifier_to_the_logit_difference(io, released):
    state = convert_state_dict(released["model"], tiny_lavt(io), released["bert_model"])
    weight = released["model"]["classifier.conv1_1.weight"]
    torch.testing.assert_close(state["classifier.weight"], weight[1:] - weight[:1], atol=0, rtol=0)
    assert not any("relative_position_index" in k for k in state)
