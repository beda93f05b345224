"""DANet / LAVT networks: shapes, each equation on hand-checked cases, switches, parameter counts, gradients."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsseg.models.danet import (
    DANet,
    ReliableAgentAlignment,
    affinity_alignment_loss,
    affinity_loss,
    pseudo_labels,
    self_affinity,
    target_affinity,
)
from rsseg.models.lavt import PixelWordAttention, TextEncoder, TextFeatures
from rsseg.tasks.danet import DANetTask, ReferringLoss

TINY_SWIN = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "window_size": 4}
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 500}
TINY = dict(pretrained=False, backbone_kwargs=TINY_SWIN, text_pretrained=False, text_config=TINY_BERT,
            decoder_channels=32, num_agents=4, key_dim=16, agent_heads=2, agent_ffn_dim=64, drop_path_rate=0.0)


def tiny_task(affinity_alignment: bool = True, num_classes: int = 2, **net) -> DANetTask:
    """A DANetTask of the tiny DANet (``net``: its arguments besides TINY's)."""
    return DANetTask(net=functools.partial(DANet, **{**TINY, **net}), num_classes=num_classes,
                     affinity_alignment=affinity_alignment)


def tokens(batch: int, length: int = 12, valid: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 500, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    for b, n in enumerate(valid):
        mask[b, n:] = 0
        ids[b, n:] = 0
    return ids, mask


# --- shapes and switches ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 96])
@pytest.mark.parametrize("agent_alignment", [True, False])
def test_output_shapes(size, agent_alignment):
    torch.manual_seed(0)
    net = DANet(img_size=size, agent_alignment=agent_alignment, **TINY).eval()
    ids, mask = tokens(2, valid=(12, 5))
    out = net(torch.randn(2, 3, size, size), ids, mask)
    assert out.logits.shape == (2, 1, size, size)
    assert [f.shape for f in out.features] == [
        (2, 16 * 2**i, size // 2 ** (i + 2), size // 2 ** (i + 2)) for i in range(4)
    ]
    assert [a.shape for a in out.activations] == [(2, size // 2 ** (i + 2), size // 2 ** (i + 2)) for i in range(4)]
    assert (out.agents is not None) == agent_alignment
    if agent_alignment:
        assert out.agents.shape == (2, 4)  # K = 4 of the (size/32)² pixels of F_4


@pytest.mark.parametrize("affinity", [True, False])
@pytest.mark.parametrize("agents", [True, False])
def test_the_four_table3_rows_train_and_reach_every_part(affinity, agents):
    torch.manual_seed(0)
    task = tiny_task(img_size=64, affinity_alignment=affinity, agent_alignment=agents)
    ids, mask = tokens(2, valid=(12, 6))
    batch = {"image": torch.randn(2, 3, 64, 64), "input_ids": ids, "attention_mask": mask,
             "mask": (torch.rand(2, 64, 64) > 0.7).long()}
    terms = task.criterion(task(batch), batch["mask"])
    assert ("affinity" in terms) == affinity
    terms["total"].backward()
    net = task.net
    for part in (net.text_encoder, net.encoder.fusions, net.encoder.gates, net.decoder,
                 net.agent_alignment if agents else net.classifier):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_affinity_alignment_adds_no_parameters():
    counts = {}
    for affinity in (True, False):
        torch.manual_seed(0)
        task = tiny_task(img_size=64, affinity_alignment=affinity)
        counts[affinity] = sum(p.numel() for p in task.parameters())
    assert counts[True] == counts[False] > 0
    torch.manual_seed(0)
    lavt = tiny_task(img_size=64, affinity_alignment=False, agent_alignment=False)
    assert sum(p.numel() for p in lavt.parameters()) < counts[True]  # RAAM has parameters, the affinity loss none


def test_frozen_text_encoder_gets_no_gradient_and_stays_in_eval():
    task = tiny_task(img_size=64, text_frozen=True).train()
    assert not task.net.text_encoder.training
    assert not any(p.requires_grad for p in task.net.text_encoder.parameters())


def test_wrong_num_classes_is_refused():
    with pytest.raises(ValueError, match="binary"):
        tiny_task(num_classes=6, img_size=64)


# --- Eq. 1-3: explicit affinity alignment ------------------------------------------------------------


def test_self_affinity_is_the_row_softmax_of_cosines():
    f = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])
    cos = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=float)
    expected = np.exp(cos) / np.exp(cos).sum(1, keepdims=True)
    np.testing.assert_allclose(self_affinity(f)[0].numpy(), expected, rtol=1e-6)
    labels = torch.tensor([[True, False, True]])
    assert target_affinity(labels)[0].tolist() == [[1, 0, 1], [0, 0, 0], [1, 0, 1]]


def test_pseudo_labels_threshold_the_min_max_scaled_activation():
    activation = torch.tensor([[[0.0, 1.0], [4.5, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    # scaled: 0, .2, .9, 1 -> > .8 ; a flat map has no foreground
    assert pseudo_labels(activation, 0.8).tolist() == [[[False, False], [True, True]], [[False, False], [False, False]]]
    assert pseudo_labels(activation, 0.95).tolist()[0] == [[False, False], [False, True]]


def test_affinity_loss_by_hand():
    # three pixels of one image (C = 2, h = 1, w = 3); targets: pixels 0 and 2
    f = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]])[:, :, None, :]
    targets = torch.tensor([[[True, False, True]]])
    unit = np.array([[1, 0], [0, 1], [1 / math.sqrt(2), 1 / math.sqrt(2)]])
    logits = unit @ unit.T
    a = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    fg = [0, 2]
    total = sum((a[m, n] - 1) ** 2 for m in fg for n in fg)
    assert float(affinity_loss(f, targets, "sum")) == pytest.approx(total, rel=1e-6)
    assert float(affinity_loss(f, targets, "rows")) == pytest.approx(total / 2, rel=1e-6)
    # an image without pseudo-target counts 0 in the mean over images
    both = affinity_loss(torch.cat([f, f]), torch.cat([targets, torch.zeros_like(targets)]), "sum")
    assert float(both) == pytest.approx(total / 2, rel=1e-6)


def eq1_by_hand(vectors: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 1 entry by entry for N×C ``vectors``: row m is Softmax_n(f_m·f_n / (‖f_m‖‖f_n‖) / τ); 0 for a zero vector."""
    n = vectors.shape[0]
    out = torch.zeros(n, n, dtype=torch.float64)
    for m in range(n):
        logits = []
        for k in range(n):
            norms = torch.linalg.vector_norm(vectors[m]) * torch.linalg.vector_norm(vectors[k])
            cosine = torch.dot(vectors[m], vectors[k]) / norms if norms > 0 else torch.tensor(0.0, dtype=torch.float64)
            logits.append(torch.exp(cosine / temperature))
        for k in range(n):
            out[m, k] = logits[k] / sum(logits)
    return out


def eq3_by_hand(features: torch.Tensor, targets: torch.Tensor, reading: str, temperature: float) -> float:
    """Eq. 3 per image, entry by entry, averaged over images: ‖A_F ⊙ S − S‖²_F with A_F = Eq. 1 of F̃ and
    S the target's affinity: Self-Affinity(Â_tv) (Eq. 1 on the one-channel 0/1 map) for ``literal``, the 0/1
    product â_m·â_n for ``rows`` (then divided by the number of target pixels) and ``sum``."""
    total = 0.0
    for b in range(features.shape[0]):
        c, h, w = features.shape[1:]
        pixels = [features[b, :, y, x].double() for y in range(h) for x in range(w)]  # row-major, as F̃
        labels = [float(targets[b, y, x]) for y in range(h) for x in range(w)]
        a_f = eq1_by_hand(torch.stack(pixels), temperature)
        if reading == "literal":
            s = eq1_by_hand(torch.tensor(labels, dtype=torch.float64)[:, None], temperature)
        else:
            s = torch.tensor([[lm * ln for ln in labels] for lm in labels], dtype=torch.float64)
        norm = sum(float(a_f[m, n] * s[m, n] - s[m, n]) ** 2 for m in range(len(pixels)) for n in range(len(pixels)))
        total += norm / max(sum(labels), 1.0) if reading == "rows" else norm
    return total / features.shape[0]


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
@pytest.mark.parametrize("reading", ["rows", "sum", "literal"])
def test_eq1_and_eq3_match_a_hand_computed_case(reading, temperature):
    torch.manual_seed(3)
    features = torch.randn(2, 3, 2, 3)  # 2 images, C = 3, a 2×3 grid (N = 6 ≠ C)
    targets = torch.tensor([[[True, True, False], [False, False, False]],
                            [[False, True, False], [True, False, True]]])  # |T| = 2 and 3, not symmetric
    pixels = features[0].flatten(1).T.double()
    torch.testing.assert_close(self_affinity(pixels[None], temperature)[0].double(),
                               eq1_by_hand(pixels, temperature), rtol=1e-5, atol=1e-7)
    expected = eq3_by_hand(features, targets, reading, temperature)
    assert float(affinity_loss(features, targets, reading, temperature)) == pytest.approx(expected, rel=1e-5)
    loss = ReferringLoss(affinity_reading=reading, affinity_temperature=temperature, affinity_stages=(2,))
    stage_features = [torch.zeros(2, 3, 4, 6), features, torch.zeros(2, 3, 1, 3), torch.zeros(2, 3, 1, 1)]
    activations = [torch.zeros(2, 4, 6), targets.float(), torch.zeros(2, 1, 3), torch.zeros(2, 1, 1)]
    from rsseg.models.danet import DANetOutput

    terms = loss(DANetOutput(torch.zeros(2, 1, 4, 4), stage_features, activations), torch.zeros(2, 4, 4))
    assert float(terms["affinity"]) == pytest.approx(expected, rel=1e-5)  # the task's switch reaches Eq. 3


def test_the_literal_eq3_constrains_background_rows_too_and_the_default_does_not():
    """Where the readings differ: the literal Self-Affinity(Â_tv) is a row softmax, so background rows weigh
    1/N each and target rows spread over every column; the default's 0/1 target has no background row."""
    torch.manual_seed(0)
    features = torch.randn(1, 4, 3, 3, requires_grad=True)
    targets = torch.zeros(1, 3, 3, dtype=torch.bool)
    targets[0, 0, :2] = True
    grads = {}
    for reading in ("rows", "literal"):
        features.grad = None
        affinity_loss(features, targets, reading).backward()
        grads[reading] = features.grad.flatten(2)[0].abs().sum(0)  # per pixel
    background = ~targets.flatten()
    assert grads["literal"][background].min() > 0
    # an image without pseudo-target: nothing to align under "rows"/"sum", uniform 1/N rows under "literal"
    empty = torch.zeros_like(targets)
    for reading, constrained in (("rows", False), ("sum", False), ("literal", True)):
        features.grad = None
        loss = affinity_loss(features, empty, reading)
        loss.backward()
        assert (float(loss.detach()) > 0) == constrained and (features.grad.abs().sum() > 0) == constrained
    with pytest.raises(ValueError, match="reading"):
        affinity_loss(features, targets, "mean")
    with pytest.raises(ValueError, match="temperature"):
        affinity_loss(features, targets, "rows", 0.0)


def test_the_eq3_switches_are_checked_and_the_former_name_still_loads():
    assert ReferringLoss(affinity_reduction="sum").affinity_reading == "sum"  # configs/checkpoints before the switch
    assert ReferringLoss(affinity_reading="literal", affinity_reduction="literal").affinity_reading == "literal"
    with pytest.raises(ValueError, match="contradicts"):
        ReferringLoss(affinity_reading="literal", affinity_reduction="sum")
    with pytest.raises(ValueError, match="affinity_reading"):
        ReferringLoss(affinity_reading="mean")
    with pytest.raises(ValueError, match="affinity_temperature"):
        ReferringLoss(affinity_temperature=0.0)


def test_affinity_loss_pulls_target_pixels_together_and_away_from_background():
    torch.manual_seed(0)
    features = torch.randn(1, 8, 6, 6, requires_grad=True)
    targets = torch.zeros(1, 6, 6, dtype=torch.bool)
    targets[0, :3, :3] = True
    fg, bg = targets.flatten(), ~targets.flatten()

    def cosines() -> tuple[float, float]:
        unit = F.normalize(features.detach().flatten(2)[0].T, dim=1)
        return float((unit[fg] @ unit[fg].T).mean()), float((unit[fg] @ unit[bg].T).mean())

    within_before, across_before = cosines()
    first = float(affinity_loss(features.detach(), targets))
    optimizer = torch.optim.SGD([features], lr=5.0)
    for _ in range(100):
        optimizer.zero_grad()
        affinity_loss(features, targets).backward()
        optimizer.step()
    within, across = cosines()
    assert float(affinity_loss(features.detach(), targets)) < first
    assert within_before < 0.2 and within > 0.99  # the target's pixels align with each other
    assert across < across_before - 0.5  # and turn away from the background (the softmax of Eq. 1)


def test_affinity_alignment_loss_uses_the_chosen_stages_and_no_gradient_through_pseudo_labels():
    torch.manual_seed(0)
    features = [torch.randn(2, 4, s, s, requires_grad=True) for s in (8, 4, 2, 1)]
    activations = [torch.randn(2, s, s, requires_grad=True) for s in (8, 4, 2, 1)]
    loss = affinity_alignment_loss(features, activations, stages=(2, 3))
    expected = sum(affinity_loss(features[i], pseudo_labels(activations[i].detach())) for i in (1, 2))
    assert float(loss) == pytest.approx(float(expected))
    loss.backward()
    assert features[0].grad is None and features[1].grad is not None and features[3].grad is None
    assert all(a.grad is None for a in activations)
    with pytest.raises(ValueError, match="subset of 1..4"):
        affinity_alignment_loss(features, activations, stages=(0, 2))


# --- Eq. 4-9: reliable agent alignment -----------------------------------------------------------------


def test_agents_are_the_pixels_most_correlated_with_the_real_words():
    torch.manual_seed(0)
    raam = ReliableAgentAlignment(visual_dim=3, text_dim=3, out_dim=4, key_dim=3, num_agents=2, heads=1, ffn_dim=8)
    with torch.no_grad():
        for layer in (raam.word_query, raam.key):
            layer.weight.copy_(torch.eye(3))
            layer.bias.zero_()
    keys = torch.tensor([[[1.0, 0, 0], [0, 5, 0], [0, 0, 1], [2, 0, 0], [0, 0, 3]]])  # 5 pixels
    words = torch.tensor([[[1.0, 0, 0], [0, 0, 1], [0, 100, 0]]])  # the third word is padding
    mask = torch.tensor([[True, True, False]])
    # reliability over real words: pixel sums of channels 0 and 2 -> [1, 0, 1, 2, 3]
    agents = raam.select_agents(raam.key(keys), words, mask)
    assert agents[0].tolist() == [4, 3]
    mask[0, 2] = True  # with the padded word counted, pixel 1 would win
    assert raam.select_agents(raam.key(keys), words, mask)[0, 0].item() == 1


def test_one_backward_of_the_full_loss_reaches_every_parameter_of_raam_and_of_the_affinity_path():
    """W^Q (Eq. 4-5) only chooses the agents (a top-K, Eq. 6): it needs the straight-through path to train.

    The affinity path is every parameter the affinity term reaches through F_2..F_4 (the text encoder,
    the patch embedding, every Swin stage, PWAM and gate before the last stage, the norms of F_2..F_4);
    the last stage's language gate updates an x that nothing reads (LAVT's layout), so it is not on it.
    """
    torch.manual_seed(0)
    task = tiny_task(img_size=64)
    ids, mask = tokens(2, valid=(12, 6))
    batch = {"image": torch.randn(2, 3, 64, 64), "input_ids": ids, "attention_mask": mask,
             "mask": (torch.rand(2, 64, 64) > 0.7).long()}
    terms = task.criterion(task(batch), batch["mask"])
    net, encoder = task.net, task.net.encoder
    affinity_path = {f"text_encoder.{n}": p for n, p in net.text_encoder.named_parameters()}
    for name, module in [("patch_embed", encoder.patch_embed), ("stages", encoder.stages),
                         *((f"fusions.{i}", encoder.fusions[i]) for i in range(4)),
                         *((f"gates.{i}", encoder.gates[i]) for i in range(3)),
                         *((f"norms.{i}", encoder.norms[i]) for i in (1, 2, 3))]:
        affinity_path |= {f"encoder.{name}.{n}": p for n, p in module.named_parameters()}
    from_affinity = torch.autograd.grad(terms["affinity"], list(affinity_path.values()), retain_graph=True,
                                        allow_unused=True)
    dead = [n for n, g in zip(affinity_path, from_affinity, strict=True) if g is None or not g.abs().sum() > 0]
    assert not dead, f"the affinity term does not reach {dead}"
    terms["total"].backward()
    raam = {f"agent_alignment.{n}": p for n, p in net.agent_alignment.named_parameters()}
    dead = [n for n, p in (raam | affinity_path).items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient after one backward of the full loss: {dead}"
    assert net.agent_alignment.word_query.weight.grad.abs().sum() > 0  # W^Q, the reason for this test


def test_aligned_classifier_matches_eq_7_to_9_by_hand():
    torch.manual_seed(0)
    raam = ReliableAgentAlignment(visual_dim=5, text_dim=6, out_dim=4, key_dim=3, num_agents=3, heads=1,
                                  ffn_dim=8).double()
    x = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    words, sentence = torch.randn(2, 4, 6, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    classifier, agents, align = raam.aligned_classifier(x, words, mask, sentence)

    def lin(layer, v):
        return layer.weight.detach().numpy() @ v + layer.bias.detach().numpy()

    for b in range(2):
        pixels = x[b].flatten(1).T.numpy()  # N×C
        n_words = int(mask[b].sum())
        corr = np.array([[lin(raam.word_query, words[b, n].numpy()) @ lin(raam.key, p) / math.sqrt(3)
                          for p in pixels] for n in range(n_words)])
        chosen = np.argsort(-corr.sum(0), kind="stable")[:3]
        assert sorted(agents[b].tolist()) == sorted(chosen.tolist())
        agent_keys = [lin(raam.key, pixels[k]) for k in agents[b].tolist()]
        qg = lin(raam.sentence_query, sentence[b].numpy())
        g = np.exp([qg @ k / math.sqrt(3) for k in agent_keys])
        g /= g.sum()
        expected_align, expected_cls = [], np.zeros(4)
        for p in pixels:
            qp = lin(raam.pixel_query, p)
            pm = np.exp([qp @ k / math.sqrt(3) for k in agent_keys])
            pm /= pm.sum()
            expected_align.append(float(g @ pm))
            expected_cls += expected_align[-1] * lin(raam.value, p)
        np.testing.assert_allclose(align[b].detach().numpy(), expected_align, rtol=1e-10)
        np.testing.assert_allclose(classifier[b].detach().numpy(), expected_cls, rtol=1e-10)


def test_prediction_is_eq10_the_decoder_features_times_the_aligned_classifier():
    """Y = E × L̂_gᵀ per pixel (Eq. 10) at stride 4, then upsampled (bilinear, align_corners=True) to the input:
    recomputed by hand from the decoder's E and RAAM's output, captured by hooks."""
    torch.manual_seed(0)
    net = DANet(**TINY).eval()
    captured = {}
    net.decoder.register_forward_hook(lambda m, i, out: captured.__setitem__("E", out))
    net.agent_alignment.register_forward_hook(lambda m, i, out: captured.__setitem__("g", out[0]))
    ids, mask = tokens(2, valid=(12, 7))
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64), ids, mask)
    e, g = captured["E"].double(), captured["g"].double()
    by_hand = torch.stack([(e[b] * g[b][:, None, None]).sum(0) for b in range(2)])[:, None]  # B×1×h×w
    by_hand = F.interpolate(by_hand, size=(64, 64), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out.logits.double(), by_hand, rtol=1e-5, atol=1e-5)
    assert (by_hand[0] - by_hand[1]).abs().max() > 1e-3  # each sentence's own classifier


# --- LAVT parts ----------------------------------------------------------------------------------------


def test_pwam_ignores_padded_words_and_reports_the_cls_activation():
    torch.manual_seed(0)
    pwam = PixelWordAttention(dim=8, text_dim=6, heads=2).eval()
    x = torch.randn(1, 10, 8)
    words = torch.randn(1, 5, 6)
    mask = torch.tensor([[True, True, True, False, False]])
    fused, activation = pwam(x, TextFeatures(words, words[:, 0], mask))
    other = words.clone()
    other[:, 3:] = torch.randn(1, 2, 6) * 10
    fused2, activation2 = pwam(x, TextFeatures(other, other[:, 0], mask))
    torch.testing.assert_close(fused, fused2)
    torch.testing.assert_close(activation, activation2)
    q = F.instance_norm(pwam.query(x).transpose(1, 2)).transpose(1, 2)  # B×N×C
    k = pwam.key(words[:, 0])  # the [CLS] key
    expected = (q.view(1, 10, 2, 4) * k.view(1, 1, 2, 4)).sum(-1).mean(-1) / 2  # mean over heads, /√4
    torch.testing.assert_close(activation, expected)


def test_packaged_minilm_gives_word_and_cls_features():
    from rsseg.data.datasets.refsegrs import load_tokenizer, tokenize

    name = "sentence-transformers/all-MiniLM-L6-v2"
    encoder = TextEncoder(name).eval()
    ids, mask = tokenize(load_tokenizer(name), ["the roads on the left", "trees"], 20)
    with torch.no_grad():
        text = encoder(ids, mask)
    assert encoder.dim == 384 and text.words.shape == (2, 20, 384)
    torch.testing.assert_close(text.sentence, text.words[:, 0])
    assert text.mask.tolist()[1][:4] == [True, True, True, False]  # [CLS] trees [SEP] [PAD]


# --- Eq. 11 --------------------------------------------------------------------------------------------


def test_lavt_weighted_cross_entropy_on_one_logit_equals_torch_two_class_ce():
    torch.manual_seed(0)
    z, target = torch.randn(3, 7, 5), (torch.rand(3, 7, 5) > 0.6).long()
    two_channel = torch.stack([torch.zeros_like(z), z], 1)
    expected = F.cross_entropy(two_channel, target, weight=torch.tensor([0.9, 1.1]))
    assert float(ReferringLoss("lavt_ce").mask_term(z, target)) == pytest.approx(float(expected), rel=1e-6)
    assert float(ReferringLoss("bce").mask_term(z, target)) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(z, target.float())), rel=1e-6)


# --- LAVT's training recipe: BERT layers 0…N-1 only, LAVT's weight-decay groups --------------------


def test_text_train_layers_trains_only_the_first_layers_as_lavt():
    """LAVT's train.py optimises BERT's encoder.layer[0:10] and nothing else of BERT: with 3 layers and
    train_layers 2, the embeddings and layer 2 must stay fixed through a step, layers 0-1 must move."""
    torch.manual_seed(0)
    task = tiny_task(text_config={**TINY_BERT, "num_hidden_layers": 3}, text_train_layers=2)
    bert = task.net.text_encoder.model
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    first_two = ("encoder.layer.0.", "encoder.layer.1.")
    assert trainable and trainable == {n for n, _ in bert.named_parameters() if n.startswith(first_two)}
    optimizer = torch.optim.AdamW([g for g in _groups(task) if g["params"]], lr=1e-2)
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    ids, mask = tokens(2)
    out = task.net(torch.randn(2, 3, 64, 64), ids, mask)
    out.logits.mean().backward()
    optimizer.step()
    moved = {n for n, p in bert.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= trainable
    assert not any(n.startswith(("embeddings.", "encoder.layer.2.")) for n in moved)
    assert task.train().net.text_encoder.model.training  # dropout stays on as in LAVT (unlike text_frozen)


def test_text_train_layers_errors():
    with pytest.raises(ValueError, match="exclude each other"):
        TextEncoder("x", pretrained=False, config=TINY_BERT, frozen=True, train_layers=1)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        TextEncoder("x", pretrained=False, config=TINY_BERT, train_layers=2)


def _groups(task: DANetTask) -> list[dict]:
    """The optimiser's parameter groups (no trainer: the schedule is not built)."""
    from unittest import mock

    with (mock.patch("rsseg.tasks.danet.with_schedule", lambda optimizer, *a: optimizer),
          mock.patch.object(DANetTask, "trainer", new_callable=mock.PropertyMock, return_value=None)):
        return task.configure_optimizers().param_groups


def _decay_by_name(task: DANetTask) -> dict[str, float]:
    names = {id(p): n for n, p in task.named_parameters()}
    return {names[id(p)]: g["weight_decay"] for g in _groups(task) for p in g["params"]}


def test_lavt_parameter_groups_follow_lavt_train_py():
    """LAVT decays every parameter except the visual backbone's (Swin + PWAMs + gates) norm weights/biases
    and position tables; rsseg's default also spares every other bias and the decoder's BatchNorms."""
    net = functools.partial(DANet, **{**TINY, "agent_alignment": False})
    lavt = _decay_by_name(DANetTask(net=net, affinity_alignment=False, param_groups="lavt", weight_decay=0.05))
    rsseg = _decay_by_name(DANetTask(net=net, affinity_alignment=False, weight_decay=0.05))
    assert lavt.keys() == rsseg.keys()
    checks = {  # name fragment → (LAVT's weight decay, rsseg's)
        "net.encoder.stages.0.blocks.0.norm1.weight": (0.0, 0.0),
        "net.encoder.stages.0.blocks.0.attn.relative_position_bias_table": (0.0, 0.0),
        "net.encoder.stages.0.blocks.0.attn.qkv.bias": (0.05, 0.0),
        "net.encoder.stages.0.blocks.0.attn.qkv.weight": (0.05, 0.05),
        "net.encoder.stages.1.downsample.norm.bias": (0.0, 0.0),
        "net.encoder.norms.3.weight": (0.0, 0.0),  # LAVT's norm3 on the stage output
        "net.encoder.fusions.0.query.bias": (0.05, 0.0),
        "net.decoder.fuse.0.1.weight": (0.05, 0.0),  # a BatchNorm of the decoder (LAVT's classifier group)
        "net.classifier.bias": (0.05, 0.0),
        "net.text_encoder.model.embeddings.LayerNorm.weight": (0.05, 0.0),
    }
    for name, expected in checks.items():
        assert (lavt[name], rsseg[name]) == expected, name
    encoder_norms = {n for n in lavt if n.startswith("net.encoder.") and "norm" in n}
    assert encoder_norms and all(lavt[n] == 0.0 for n in encoder_norms)
    assert all(lavt[n] == 0.05 for n in lavt if not n.startswith("net.encoder."))
    with pytest.raises(ValueError, match="param_groups"):
        DANetTask(net=functools.partial(DANet, **TINY), param_groups="mmseg")
