"""The mutant list: one equation-level breakage each (wrong axis, swapped operand, dropped term or
normalisation, wrong constant, off-by-one, tie rule), written as an exact text replacement in one file.

``tests/test_mutant_catalogue.py`` keeps the list in step with the code (each ``old`` text occurs exactly
once and the mutated file still parses); ``python -m tests.mutants.run`` applies each mutant to a copy of
the project and runs its group's test files, which must fail.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    group: str  # which part of rsseg it breaks: a method or the metric suite (GROUP_TESTS' keys)
    path: str  # relative to the repository root
    old: str
    new: str
    why: str


# The default-run test files that must kill a group's mutants.
GROUP_TESTS: dict[str, tuple[str, ...]] = {
    "metrics": (
        "tests/test_metrics_semantic.py", "tests/test_metrics_referring.py", "tests/test_metrics_wfmeasure.py",
        "tests/test_metrics_wfmeasure_torch.py", "tests/test_metrics_boundary.py",
    ),
    "d2ls": ("tests/test_d2ls_model.py",),
    "danet": ("tests/test_danet_model.py",),
    "idgbr": ("tests/test_idgbr_model.py",),
    "sdci": ("tests/test_sdci_model.py", "tests/test_sdci_cscp.py"),
}

SEMANTIC = "rsseg/metrics/semantic.py"
REFERRING = "rsseg/metrics/referring.py"
WFM = "rsseg/metrics/wfmeasure.py"
WFM_TORCH = "rsseg/metrics/wfmeasure_torch.py"
BOUNDARY = "rsseg/metrics/boundary.py"
D2LS = "rsseg/models/d2ls.py"
DANET = "rsseg/models/danet.py"
IDGBR = "rsseg/models/idgbr.py"
SDCI_FUSION = "rsseg/models/sdci/fusion.py"
SDCI_SEMANTIC = "rsseg/models/sdci/semantic.py"
SDCI_CSCP = "rsseg/models/sdci/cscp.py"

MUTANTS: tuple[Mutant, ...] = (
    # ---- metrics -------------------------------------------------------------------------------------
    Mutant("iou-union-drops-tp", "metrics", SEMANTIC,
           "union = gt_count + pred_count - tp", "union = gt_count + pred_count",
           "IoU = TP/(TP+FP+FN): the union counts TP once"),
    Mutant("f1-factor-two", "metrics", SEMANTIC,
           "f1 = _div(2 * tp, gt_count + pred_count)", "f1 = _div(tp, gt_count + pred_count)",
           "F1 = 2TP/(2TP+FP+FN)"),
    Mutant("precision-over-gt", "metrics", SEMANTIC,
           "precision = _div(tp, pred_count)", "precision = _div(tp, gt_count)",
           "precision divides by the predicted count (columns), recall by the ground truth (rows)"),
    Mutant("kappa-pe-normalisation", "metrics", SEMANTIC,
           "pe = float((gt_count * pred_count).sum() / (total * total))",
           "pe = float((gt_count * pred_count).sum() / total)",
           "chance agreement p_e = Σ row·col / N²"),
    Mutant("kappa-sign", "metrics", SEMANTIC,
           "kappa = (oa - pe) / (1.0 - pe)", "kappa = (oa - pe) / (1.0 + pe)", "Kappa = (p_o − p_e)/(1 − p_e)"),
    Mutant("confusion-transposed", "metrics", SEMANTIC,
           "torch.bincount((target * k + labels).reshape(-1)", "torch.bincount((labels * k + target).reshape(-1)",
           "rows are the ground truth, columns the prediction"),
    Mutant("absent-class-rule", "metrics", SEMANTIC,
           "absent_mask = union == 0", "absent_mask = gt_count == 0",
           "a class is absent only when neither target nor prediction holds it"),
    Mutant("exclude-from-mean-ignored", "metrics", SEMANTIC,
           "keep[list(exclude_from_mean)] = False", "keep[list(exclude_from_mean)] = True",
           "excluded classes (e.g. clutter) leave the means"),
    Mutant("referring-union-is-xor", "metrics", REFERRING,
           "u = (preds | target).flatten(1).sum(1)", "u = (preds ^ target).flatten(1).sum(1)",
           "U = |P ∨ G|"),
    Mutant("referring-pr-strict", "metrics", REFERRING,
           "(iou[:, None] >= thr[None, :])", "(iou[:, None] > thr[None, :])", "Pr@X counts IoU ≥ X (tie rule)"),
    Mutant("referring-logits-argmin", "metrics", REFERRING,
           "preds = preds.argmax(1).bool()", "preds = preds.argmin(1).bool()",
           "two-channel logits: foreground where channel 1 wins"),
    Mutant("wfm-alpha-constant", "metrics", WFM,
           "ALPHA = math.log(0.5) / 5", "ALPHA = math.log(0.5) / 4", "B = 2 − exp(αΔ), α = ln 0.5 / 5"),
    Mutant("wfm-gaussian-sigma", "metrics", WFM,
           "(2 * 5.0**2))", "(2 * 5.0))", "fspecial('gaussian', 7, 5): σ = 5"),
    Mutant("wfm-precision-drops-fp", "metrics", WFM,
           "precision = tp_w / (tp_w + fp_w + EPS)", "precision = tp_w / (tp_w + EPS)",
           "P^w = TP^w/(TP^w + FP^w)"),
    Mutant("wfm-beta-swapped", "metrics", WFM,
           "(recall + b2 * precision + EPS)", "(b2 * recall + precision + EPS)",
           "F_β = (1+β²)PR/(β²P + R)"),
    Mutant("wfm-min-is-max", "metrics", WFM,
           "np.minimum(E, EA, out=EA)", "np.maximum(E, EA, out=EA)", "E' = min(E, E_A) on the foreground"),
    Mutant("wfm-tie-rule-rows-first", "metrics", WFM,
           "(np.array([o[1] for o in _offs]), np.array([o[0] for o in _offs]))",
           "(np.array([o[0] for o in _offs]), np.array([o[1] for o in _offs]))",
           "bwdist's nearest-pixel ties: smallest column first (the mutant breaks ties by row first)"),
    Mutant("wfm-torch-min-is-max", "metrics", WFM_TORCH,
           "EA = torch.minimum(E, _gaussian(Et, taps))", "EA = torch.maximum(E, _gaussian(Et, taps))",
           "E' = min(E, E_A) on the foreground (batched torch path)"),
    Mutant("boundary-band-off-by-one", "metrics", BOUNDARY,
           "np.ones((band, band), np.uint8)", "np.ones((band + 1, band + 1), np.uint8)",
           "the 3 px band is a 3×3 dilation"),
    Mutant("boundary-aggregate-max", "metrics", BOUNDARY,
           "wf_min, wf_mean = min(valid),", "wf_min, wf_mean = max(valid),", "IDGBR reports the min over values"),
    Mutant("boundary-keeps-ignore", "metrics", BOUNDARY,
           "return out & (lab != 255)", "return out", "ignored pixels (255) are outside the band"),
    # ---- D2LS ----------------------------------------------------------------------------------------
    Mutant("d2ls-modulator-softmax-axis", "d2ls", D2LS,
           "return logits.softmax(-1)", "return logits.softmax(1)", "Eq. 13: softmax over the r entries of a class"),
    Mutant("d2ls-stale-tokens", "d2ls", D2LS,
           "self.image_to_dict(keys, tokens + token_pe, tokens))",
           "self.image_to_dict(keys, token_pe + token_pe, token_pe))",
           "Eq. 15: the image queries the dictionary updated in the same stage"),
    Mutant("d2ls-positions-xy-swapped", "d2ls", D2LS,
           'torch.meshgrid(x, y, indexing="xy")', 'torch.meshgrid(x, y, indexing="ij")',
           "positional encoding: (x, y) pixel-centre coordinates"),
    Mutant("d2ls-avg-pool-is-max", "d2ls", D2LS,
           "self.avg_mlp(f_avg.mean((2, 3)))", "self.avg_mlp(f_avg.amax((2, 3)))",
           "Eq. 12: one half pooled by average, the other by max"),
    Mutant("d2ls-contrastive-inverted", "d2ls", D2LS,
           "return intra / (inter + eps)", "return inter / (intra + eps)", "Eq. 5: L_con = L_intra / L_inter"),
    Mutant("d2ls-inter-pair-count", "d2ls", D2LS,
           "/ (n * (n - 1) / 2)", "/ (n * n / 2)", "Eq. 8: mean over the N(N−1)/2 class pairs"),
    Mutant("d2ls-head-skips-mlp", "d2ls", D2LS,
           "weights = self.dict_mlp(tokens)", "weights = tokens[..., : image.shape[1]]",
           "Eq. 16: logits are the product with MLP(D)"),
    Mutant("d2ls-attention-unscaled", "d2ls", D2LS,
           "out = F.scaled_dot_product_attention(q, k, v)", "out = F.scaled_dot_product_attention(q, k, v, scale=1.0)",
           "Eq. 15: softmax(QKᵀ/√d)"),
    # ---- DANet ---------------------------------------------------------------------------------------
    Mutant("danet-affinity-softmax-axis", "danet", DANET,
           "/ temperature).softmax(-1)", "/ temperature).softmax(-2)", "Eq. 1: softmax over each row"),
    Mutant("danet-affinity-unnormalised", "danet", DANET,
           "unit = F.normalize(features.float(), dim=-1)", "unit = features.float()",
           "Eq. 1: F̃F̃ᵀ/‖F̃‖²"),
    Mutant("danet-pseudo-label-inverted", "danet", DANET,
           "return (scaled > alpha).view_as(activation)", "return (scaled < alpha).view_as(activation)",
           "Eq. 2: Â_tv = [a > α]"),
    Mutant("danet-eq3-drops-mask", "danet", DANET,
           "((affinity * target - target) ** 2)", "((affinity - target) ** 2)", "Eq. 3: ‖A_F ⊙ S − S‖²"),
    Mutant("danet-rows-normaliser", "danet", DANET,
           "per_image = per_image / labels.sum(1).clamp_min(1)", "per_image = per_image / labels.shape[1]",
           "the 'rows' reading divides by the image's |T|"),
    Mutant("danet-reliability-ignores-padding", "danet", DANET,
           "return (corr * word_mask[:, :, None].to(corr.dtype)).sum(1)", "return corr.sum(1)",
           "Eq. 6: r_m sums over the real words only"),
    Mutant("danet-pixel-corr-softmax-axis", "danet", DANET,
           "agent_keys.transpose(1, 2) * self.scale).softmax(-1)  # B×N×K",
           "agent_keys.transpose(1, 2) * self.scale).softmax(1)  # B×N×K",
           "Eq. 7: corr^p is a softmax over the agents"),
    Mutant("danet-no-refinement-layer", "danet", DANET,
           "return self.refine(classifier[:, None])[:, 0], agents", "return classifier, agents",
           "§3.3: L̂_g passes a transformer layer"),
    Mutant("danet-eq10-mean-classifier", "danet", DANET,
           'torch.einsum("bchw,bc->bhw", embedding, classifier)',
           'torch.einsum("bchw,bc->bhw", embedding, classifier.mean(1, keepdim=True).expand_as(classifier))',
           "Eq. 10: Y = E × L̂_gᵀ"),
    Mutant("danet-key-scale", "danet", DANET,
           "self.scale = num_agents, 1 / math.sqrt(key_dim)", "self.scale = num_agents, 1 / key_dim",
           "Eq. 5, 7: scaled by 1/√C_k"),
    # ---- IDGBR ---------------------------------------------------------------------------------------
    Mutant("idgbr-eq12-drops-affine", "idgbr", IDGBR,
           "return 2 * torch.sigmoid(self.table(labels).permute(0, 3, 1, 2)) - 1",
           "return torch.sigmoid(self.table(labels).permute(0, 3, 1, 2))",
           "Eq. 12: E = 2·sigmoid(E_0) − 1, a code in [−1, 1]"),
    Mutant("idgbr-eq13-square", "idgbr", IDGBR,
           "((1 - (t.double() / T) ** 3) * T)", "((1 - (t.double() / T) ** 2) * T)",
           "Eq. 13: the cubic timestep schedule"),
    Mutant("idgbr-eq8-concat-order", "idgbr", IDGBR,
           "self.zero_conv(torch.cat([noisy, cond], dim=1))", "self.zero_conv(torch.cat([cond, noisy], dim=1))",
           "Eq. 8: ZConv([f_zt, f_c]) in that order"),
    Mutant("idgbr-eq10-drops-residual", "idgbr", IDGBR,
           "return fused + self.to_out(attended)", "return self.to_out(attended)",
           "Eq. 10: f_g = f' + Attn(f', f_c, f_c)"),
    Mutant("idgbr-cfg-base", "idgbr", IDGBR,
           "return plain + guidance_scale * (guided - plain)", "return guided + guidance_scale * (guided - plain)",
           "classifier-free guidance: ε_u + w·(ε_c − ε_u)"),
    Mutant("idgbr-residuals-subtracted", "idgbr", IDGBR,
           "skips = tuple(s + r for s, r in", "skips = tuple(s - r for s, r in",
           "guidance outputs are added to the skip connections"),
    Mutant("idgbr-condition-order", "idgbr", IDGBR,
           "return [torch.cat(f.chunk(2), dim=1) for f", "return [torch.cat(f.chunk(2)[::-1], dim=1) for f",
           "f_c = concat(F(c_I), F(c_r)): image features first"),
    Mutant("idgbr-latent-unscaled", "idgbr", IDGBR,
           "self.vae.decode(latent / self.scaling_factor)", "self.vae.decode(latent * self.scaling_factor)",
           "latents are scaled by the VAE's factor (0.18215) after encoding, unscaled before decoding"),
    # ---- SDCI ----------------------------------------------------------------------------------------
    Mutant("sdci-zero-shot-drops-distractors", "sdci", SDCI_FUSION,
           "torch.softmax(logit_scale * cosine, dim=-1)[..., :keep]",
           "torch.softmax(logit_scale * cosine[..., :keep], dim=-1)",
           "the softmax runs over every text row; the rows after the classes only compete"),
    Mutant("sdci-align-mass", "sdci", SDCI_FUSION,
           "return queries * (n / m)", "return queries", "Align(·) keeps each row's attention mass"),
    Mutant("sdci-caf-drops-level-mean", "sdci", SDCI_FUSION,
           "return (own + weight * other) @ last + level_scores[:, :-1].mean(1)",
           "return (own + weight * other) @ last", "Eq. 8: + mean(S_1…S_{N−1})"),
    Mutant("sdci-caf-threshold-axis", "sdci", SDCI_FUSION,
           "last >= last_threshold * last.amax(1, keepdim=True)", "last >= last_threshold * last.amax(2, keepdim=True)",
           "the last level is thresholded against each class's maximum over pixels"),
    Mutant("sdci-knn-self-loops", "sdci", SDCI_FUSION,
           "similarity.diagonal(dim1=1, dim2=2).fill_(float(\"-inf\"))", "similarity.diagonal(dim1=1, dim2=2)",
           "Eq. 11: S_K keeps off-diagonal neighbours"),
    Mutant("sdci-knn-temperature", "sdci", SDCI_FUSION,
           "torch.softmax(values / temperature, dim=-1)", "torch.softmax(values * temperature, dim=-1)",
           "Eq. 12: exp(S/τ)"),
    Mutant("sdci-diffusion-restart", "sdci", SDCI_FUSION,
           "+ (1 - alpha) * start", "+ (1 - alpha) * current", "Eq. 14: the restart term is S' (the start)"),
    Mutant("sdci-prior-not-centred", "sdci", SDCI_SEMANTIC,
           "(symmetric - symmetric.mean(dim=(-2, -1), keepdim=True)).clamp_min(0)", "symmetric.clamp_min(0)",
           "Eq. 5: minus the mean μ before the ReLU"),
    Mutant("sdci-sinkhorn-order", "sdci", SDCI_SEMANTIC,
           "a = a / a.sum(-2, keepdim=True).clamp_min(tiny)", "a = a / a.sum(-1, keepdim=True).clamp_min(tiny)",
           "a Sinkhorn pass normalises columns, then rows"),
    Mutant("sdci-attention-scale", "sdci", SDCI_SEMANTIC,
           "(q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)", "(q * q.shape[-1] ** -1.0) @ k.transpose(-1, -2)",
           "Eq. 3: softmax(QKᵀ/√d)"),
    Mutant("sdci-levels-skip-ln1", "sdci", SDCI_SEMANTIC,
           "levels = [last.ln_1(level) for level in [*levels, x]]", "levels = [*levels, last.ln_1(x)]",
           "every level passes the last block's ln_1 (released code)"),
    Mutant("sdci-eq16-weights-swapped", "sdci", SDCI_CSCP,
           "w_x = w_cross + (w_in - w_cross) * same_x.to(dtype)", "w_x = w_in + (w_cross - w_in) * same_x.to(dtype)",
           "Eq. 16: w_in inside a superpixel, w_cross across"),
    Mutant("sdci-eq17-drops-dino", "sdci", SDCI_CSCP,
           "+ lambda_dino * (neg_entropy - torch.xlogy(q, p_dino))", "+ lambda_dino * neg_entropy",
           "Eq. 17: λ_D KL(q‖P_DINO)"),
    Mutant("sdci-distribution-axis", "sdci", SDCI_CSCP,
           "torch.where(soft, torch.softmax(x, dim=-3), x)", "torch.where(soft, torch.softmax(x, dim=-1), x)",
           "scores are softmaxed over the classes"),
)
