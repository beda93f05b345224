"""Rehearsal family ``d2ls_baselines``: D2LS's timm backbone and the smp baselines' encoders (docs/rehearsal.md).

Repositories (what the paper configs name, ``experiments/{d2ls,unet,deeplabv3plus,segformer}/*.yaml``; the
smoke overrides set ``pretrained: false``):

* ``timm/convnext_base.fb_in1k``: D2LS's backbone in every D2LS config. timm resolves the name through its
  pretrained registry (``pretrained_cfg.hf_hub_id``) and ``load_state_dict_from_hf`` asks the hub for
  ``pytorch_model.bin``, trying its safe alternative ``model.safetensors`` first (timm/models/_hub.py
  ``_get_safe_alternatives``); the rehearsal writes ``model.safetensors`` and ``config.json`` with timm's own
  ``save_for_hf`` (the format timm's hub repos are pushed in).
* ``smp-hub/resnet18.imagenet``, ``smp-hub/mit_b0.imagenet``: the UNet/DeepLabV3+ (resnet18) and SegFormer
  (mit_b0) encoders. smp 0.6 ``get_encoder`` downloads ``config.json`` and ``model.safetensors`` at the
  revision pinned in its encoder registry (read from the installed smp, so the cache follows the smp version),
  and loads the file with ``encoder.load_state_dict`` (strict). smp never reads that config.json when building
  a model; ``get_preprocessing_params`` reads ``input_space``, ``input_range``, ``mean`` and ``std`` from it.
  Written: the encoder's own ``state_dict`` (what the strict load accepts) and the preprocessing settings in
  the layout of smp's legacy ``pretrained_settings`` (not checked against the real hub files, offline; the real
  weight files may also hold the ImageNet classifier, ``fc.*``/``head.*``, which the encoders' ``load_state_dict``
  drops before loading).

Checks (each: the printed paper config has ``pretrained: true``; built through ``paper_cli``; every checkpoint
tensor compared with the module's before training; 2 training steps at the config's crop size, batch 1, CPU):
``d2ls_potsdam`` (768², L = 3), ``d2ls_vaihingen`` (512², L = 2: the crop of the LoveDA/CHN6-CUG/Vaihingen
configs), ``d2ls_uavid`` (1024², ≈ 11.5 GiB peak), ``unet_potsdam``, ``deeplabv3plus_potsdam`` (batch 2, see
``MIN_TRAIN_BATCH``), ``segformer_potsdam`` (768²).
"""

from __future__ import annotations

import copy
import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from rsseg.rehearsal.common import (
    REPO,
    cached_file,
    experiment,
    fit_steps,
    paper_cli,
    parameters_m,
    printed_config,
    state_matches,
    synthetic_root,
    work_folder,
)
from rsseg.rehearsal.registry import Entry

FAMILY = "d2ls_baselines"
D2LS_BACKBONE = "convnext_base.fb_in1k"
SMP_ENCODERS = (("resnet18", "imagenet"), ("mit_b0", "imagenet"))
SMP_ARCHS = {"unet": ("resnet18", "imagenet"), "deeplabv3plus": ("resnet18", "imagenet"),
             "segformer": ("mit_b0", "imagenet")}
CONFIG_FOLDERS = ("d2ls", "unet", "deeplabv3plus", "segformer")
# timm's features_only wrapper (FeatureListNet) keeps the stages and drops the classifier head: these
# checkpoint tensors of convnext_base are documented as not loaded (timm features_only removes the head).
CONVNEXT_HEAD = ("head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight")
# --- writers ---------------------------------------------------------------------------------------------------

def timm_hub_id(model_name: str) -> str:
    """The hub repository timm downloads ``model_name``'s pretrained weights from (its pretrained_cfg)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"timm has no hub weights for {model_name!r}")
    return cfg.hf_hub_id


def timm_writer(model_name: str) -> Callable[[Path], None]:
    """Writes ``model_name`` (random init of the real architecture, the ImageNet classifier included as in the
    hub checkpoint) with timm's ``save_for_hf``: ``model.safetensors`` + ``config.json`` (its pretrained_cfg)."""

    def write(folder: Path) -> None:
        import timm
        from timm.models import save_for_hf

        model = timm.create_model(model_name, pretrained=False)
        save_for_hf(model, str(folder), safe_serialization=True)

    return write


def smp_settings(encoder: str, weights: str) -> dict:
    """smp's registry entry for ``encoder``'s ``weights``: {"repo_id", "revision"} (pinned by the smp version)."""
    from segmentation_models_pytorch.encoders import encoders

    return dict(encoders[encoder]["pretrained_settings"][weights])


def smp_encoder(encoder: str) -> object:
    """The encoder module as smp's ``get_encoder`` builds it before loading weights (depth 5, stride 32)."""
    from segmentation_models_pytorch.encoders import encoders

    params = copy.deepcopy(encoders[encoder]["params"])
    params.update(depth=5, output_stride=32)
    return encoders[encoder]["encoder"](**params)


def smp_config(encoder: str) -> dict:
    """config.json of an smp-hub encoder repository: the preprocessing settings smp's
    ``get_preprocessing_params`` reads (input_space, input_range, mean, std), in the layout of smp's legacy
    ``pretrained_settings`` entries (the copy smp 0.6 still ships in encoders/vgg.py, without its url: the
    weights are in this repository); ImageNet statistics, as every smp ``imagenet`` encoder."""
    from segmentation_models_pytorch.encoders.vgg import pretrained_settings

    config = dict(pretrained_settings["vgg11"]["imagenet"])
    config.pop("url")
    return config


def smp_writer(encoder: str, weights: str) -> Callable[[Path], None]:
    """Writes ``model.safetensors`` (the encoder's state_dict, what ``get_encoder`` loads strictly) and
    ``config.json`` (``smp_config``)."""

    def write(folder: Path) -> None:
        from safetensors.torch import save_file

        module = smp_encoder(encoder)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(smp_config(encoder), indent=2) + "\n")

    return write


def entries() -> list[Entry]:
    out = [Entry(timm_hub_id(D2LS_BACKBONE), "timm", "D2LS backbone (experiments/d2ls/*.yaml)",
                 timm_writer(D2LS_BACKBONE))]
    users = {enc: [a for a, e in SMP_ARCHS.items() if e == enc] for enc in SMP_ENCODERS}
    for encoder, weights in SMP_ENCODERS:
        settings = smp_settings(encoder, weights)
        out.append(Entry(settings["repo_id"], "segmentation_models_pytorch",
                         "encoder of " + ", ".join(f"experiments/{a}/*.yaml" for a in users[(encoder, weights)]),
                         smp_writer(encoder, weights), revision=settings["revision"]))
    return out


def config_pretrained_models() -> dict[str, set[str]]:
    """Every pretrained model the family's paper configs name: {"timm": {model ids}, "smp": {"enc.weights"}}
    (read from the YAML files; smoke overrides, which turn pretrained off, are skipped)."""
    import yaml

    found: dict[str, set[str]] = {"timm": set(), "smp": set()}
    for folder in CONFIG_FOLDERS:
        for path in sorted((REPO / "experiments" / folder).glob("*.yaml")):
            net = (yaml.safe_load(path.read_text()) or {}).get("model", {}).get("init_args", {}).get("net", {})
            args = net.get("init_args", {}) if isinstance(net, dict) else {}
            if not args.get("pretrained"):
                continue
            if net.get("class_path") == "rsseg.models.D2LS":
                found["timm"].add(args["backbone"])
            elif net.get("class_path") == "rsseg.models.SMPNet":
                weights = "imagenet" if args["pretrained"] is True else args["pretrained"]
                found["smp"].add(f"{args['backbone']}.{weights}")
    return found


# --- checks ----------------------------------------------------------------------------------------------------

def _timm_expected(model_name: str, backbone) -> tuple[dict, list[str]]:
    """The checkpoint's tensors as timm loads them into the features_only backbone: through the model's own
    ``checkpoint_filter_fn`` (what ``load_pretrained`` applies), then renamed as FeatureListNet flattens the
    top-level Sequential modules (``stem.0`` → ``stem_0``, ``stages.1`` → ``stages_1``). Returns (tensors under the
    module's names, checkpoint keys the module has no place for)."""
    from safetensors.torch import load_file
    from timm.models._registry import _model_to_module, get_arch_name

    state = load_file(cached_file(timm_hub_id(model_name), "model.safetensors"))
    module = importlib.import_module(f"timm.models.{_model_to_module[get_arch_name(model_name)]}")
    filtered = module.checkpoint_filter_fn(state, backbone) if hasattr(module, "checkpoint_filter_fn") else state
    names = set(backbone.state_dict())
    expected, unplaced = {}, []
    for key, tensor in filtered.items():
        flat = key.replace(".", "_", 1)
        if key in names:
            expected[key] = tensor
        elif flat in names:
            expected[flat] = tensor
        else:
            unplaced.append(key)
    return expected, sorted(unplaced)


def _data_root(dataset: str, printed: dict) -> Path:
    """The synthetic twin prepared as the config expects: ``synthetic_root`` prepares with the preparer's default
    protocol; a config that trains on another (UAVid ``protocol: trainval``: train + val sequences, no val
    split) gets its own folder prepared with that protocol, as the config's comment says to prepare it."""
    protocol = printed["data"]["init_args"].get("protocol")
    if dataset != "uavid" or protocol in (None, "official"):
        return synthetic_root(dataset, work_folder(FAMILY), patch_size=1024)
    return synthetic_root(dataset, work_folder(FAMILY), patch_size=1024, protocol=protocol)


def _versions() -> dict:
    import segmentation_models_pytorch
    import timm

    return {"timm": timm.__version__, "segmentation_models_pytorch": segmentation_models_pytorch.__version__}


def _pretrained_net_args(printed: dict) -> dict:
    return printed["model"]["init_args"]["net"]["init_args"]


def d2ls_check(config: str, dataset: str, steps: int = 2) -> dict:
    """``experiments/d2ls/<config>.yaml`` as shipped: pretrained true, the weights loaded from the cache tensor
    for tensor before training, then ``steps`` training steps at the config's crop size, batch 1, CPU."""
    configs = [experiment(f"d2ls/{config}.yaml")]
    net = _pretrained_net_args(printed := printed_config(configs))
    if net.get("pretrained") is not True:
        raise AssertionError(f"{config}: printed config has pretrained={net.get('pretrained')!r}")
    root = _data_root(dataset, printed)
    cli, load_s = paper_cli(configs, root)
    backbone = cli.model.net.backbone
    started = time.perf_counter()
    expected, unplaced = _timm_expected(net["backbone"], backbone)
    matches = state_matches(expected, backbone.state_dict())
    if unplaced != sorted(CONVNEXT_HEAD) or matches["missing"] or matches["differ"]:
        raise AssertionError(f"{config}: checkpoint not loaded as expected: unplaced {unplaced}, "
                             f"missing {matches['missing'][:10]}, differ {matches['differ'][:10]}")
    not_from_checkpoint = sorted(set(backbone.state_dict()) - set(expected))
    if not_from_checkpoint:
        raise AssertionError(f"{config}: backbone tensors the checkpoint does not set: {not_from_checkpoint[:10]}")
    compare_s = time.perf_counter() - started
    crop = printed["data"]["init_args"]["crop_size"]
    step_s, shapes = fit_steps(cli, steps)
    return {"repo_ids": [timm_hub_id(net["backbone"])], "config": f"experiments/d2ls/{config}.yaml",
            "backbone": net["backbone"], "crop_size": crop, "batch_size": 1, "num_stages": net.get("num_stages"),
            "load_s": round(load_s, 1), "compare_s": round(compare_s, 1), "params_m": parameters_m(cli.model),
            "backbone_params_m": parameters_m(backbone), **matches,
            "unplaced": unplaced, "unplaced_why": "ImageNet classifier head, dropped by timm features_only",
            "step_s": step_s, "batch_shapes": shapes, "versions": _versions()}


# DeepLabV3+'s ASPP image-pooling branch applies BatchNorm to a 1×1 map: in training mode a batch of one
# image raises "Expected more than 1 value per channel" (smp, any encoder). The paper config trains at batch 8
# and rsseg's train loader drops a last incomplete batch, so real runs never meet it; the rehearsal trains at
# the smallest batch that works.
MIN_TRAIN_BATCH = {"deeplabv3plus": 2}


def smp_check(arch: str, dataset: str = "potsdam", steps: int = 2) -> dict:
    """``experiments/<arch>/potsdam.yaml`` as shipped: the smp encoder's pinned hub file loaded tensor for
    tensor, then ``steps`` training steps at the config's crop size, batch 1 (``MIN_TRAIN_BATCH`` where one
    image cannot train), CPU."""
    configs = [experiment(f"{arch}/{dataset}.yaml")]
    net = _pretrained_net_args(printed := printed_config(configs))
    if net.get("pretrained") is not True:
        raise AssertionError(f"{arch}: printed config has pretrained={net.get('pretrained')!r}")
    weights = "imagenet"
    settings = smp_settings(net["backbone"], weights)
    root = synthetic_root(dataset, work_folder(FAMILY), patch_size=1024)
    batch = MIN_TRAIN_BATCH.get(arch, 1)
    cli, load_s = paper_cli(configs, root, ["--data.init_args.batch_size", str(batch)])
    encoder = cli.model.net.model.encoder
    from safetensors.torch import load_file

    expected = load_file(cached_file(settings["repo_id"], "model.safetensors", settings["revision"]))
    matches = state_matches(expected, encoder.state_dict())
    not_from_checkpoint = sorted(set(encoder.state_dict()) - set(expected))
    if matches["missing"] or matches["differ"] or not_from_checkpoint:
        raise AssertionError(f"{arch}: encoder not loaded as expected: missing {matches['missing'][:10]}, "
                             f"differ {matches['differ'][:10]}, not in checkpoint {not_from_checkpoint[:10]}")
    from segmentation_models_pytorch.encoders import get_preprocessing_params

    preprocessing = get_preprocessing_params(net["backbone"], weights)  # reads the cached config.json
    crop = printed["data"]["init_args"]["crop_size"]
    step_s, shapes = fit_steps(cli, steps)
    return {"repo_ids": [settings["repo_id"]], "revision": settings["revision"],
            "config": f"experiments/{arch}/{dataset}.yaml", "encoder": f"{net['backbone']}.{weights}",
            "crop_size": crop, "batch_size": batch, "load_s": round(load_s, 1), "params_m": parameters_m(cli.model),
            "encoder_params_m": parameters_m(encoder), **matches, "preprocessing": preprocessing,
            "step_s": step_s, "batch_shapes": shapes, "versions": _versions()}


def checks() -> dict[str, Callable[[], dict]]:
    out: dict[str, Callable[[], dict]] = {
        f"{FAMILY}/d2ls_potsdam": lambda: d2ls_check("potsdam", "potsdam"),
        # the other crop sizes of the D2LS configs: 512 (Vaihingen, L = 2; LoveDA, CHN6-CUG) and 1024 (UAVid)
        f"{FAMILY}/d2ls_vaihingen": lambda: d2ls_check("vaihingen", "vaihingen"),
        f"{FAMILY}/d2ls_uavid": lambda: d2ls_check("uavid", "uavid"),
    }
    for arch in SMP_ARCHS:
        out[f"{FAMILY}/{arch}_potsdam"] = (lambda a=arch: smp_check(a))
    return out
