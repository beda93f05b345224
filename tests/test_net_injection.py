"""Issue 19: a task takes its network as ``net`` (configured once, in the network's constructor).

Every network switch shows in ``--print_config`` under ``model.init_args.net`` and takes command-line
overrides; ``load_from_checkpoint`` rebuilds the network from the checkpoint alone; checkpoints written before
the change (``tests/data/legacy``, flat hparams) still load and give the logits they gave then.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import yaml
from lightning import Callback, Trainer

from rsseg.cli import main
from rsseg.legacy import convert_legacy_checkpoint, convert_legacy_hparams
from rsseg.models import D2LS, SMPNet
from rsseg.tasks import D2LSTask, SMPSegmentationTask

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests/data/legacy"
TINY_SMP = {"backbone": "tu-test_resnet", "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}}


def _configs(method: str, dataset: str = "potsdam") -> list[str]:
    smoke = "refsegrs" if method in ("danet", "lavt") else dataset
    files = [f"experiments/{method}/{'refsegrs' if method in ('danet', 'lavt') else dataset}.yaml",
             f"experiments/{method}/smoke.yaml"]
    if method not in ("idgbr", "sdci"):
        files.append(f"experiments/smoke/{smoke}.yaml")
    return [arg for f in files for arg in ("--config", str(REPO / f))]


def _printed_model(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)["model"]


# --------------------------------------------------------------------------------------------------
# The network's switches in --print_config and on the command line

NET_SWITCHES = {  # method → (network class path, switches that must show under net.init_args)
    "unet": ("rsseg.models.SMPNet", {"arch", "backbone", "pretrained", "arch_kwargs", "in_channels"}),
    "d2ls": ("rsseg.models.D2LS", {"backbone", "pretrained", "num_stages", "branches", "head", "embed_dim"}),
    "danet": ("rsseg.models.DANet", {"backbone", "pretrained", "text_encoder", "agent_alignment", "num_agents"}),
    "lavt": ("rsseg.models.DANet", {"backbone", "pretrained", "agent_alignment", "decoder_channels"}),
    "idgbr": ("rsseg.models.IDGBR", {"sd_model", "pretrained", "vae", "guidance_width", "use_coarse"}),
    "sdci": ("rsseg.models.SDCI", {"clip_model", "dino_version", "use_cscp", "knn"}),
}


@pytest.mark.parametrize("method", sorted(NET_SWITCHES))
def test_network_switches_show_under_net_in_print_config(method, capsys):
    class_path, switches = NET_SWITCHES[method]
    model = _printed_model(_configs(method), capsys)
    net = model["init_args"]["net"]
    assert net["class_path"] == class_path
    assert switches <= set(net["init_args"])
    assert not switches & set(model["init_args"]) - {"label_embedding"}  # said once: not restated by the task


def test_nested_override_on_the_command_line_reaches_print_config(capsys):
    model = _printed_model([*_configs("d2ls"), "--model.init_args.net.init_args.num_stages", "2",
                            "--model.init_args.net.init_args.branches", "dynamic"], capsys)
    assert model["init_args"]["net"]["init_args"]["num_stages"] == 2
    assert model["init_args"]["net"]["init_args"]["branches"] == "dynamic"
    assert model["init_args"]["net"]["init_args"]["backbone"] == "convnext_atto"  # from the smoke override


class Probe(Callback):
    """Keeps the model the CLI built (``--trainer.callbacks+=tests.test_net_injection.Probe``)."""

    models: list = []

    def setup(self, trainer, pl_module, stage) -> None:
        Probe.models.append(pl_module)


def _fit(method: str, root: Path, out: Path, *overrides: str) -> tuple[object, Path]:
    """A 1-step fit from the method's smoke configs: the model the CLI built, and its last checkpoint."""
    Probe.models.clear()
    assert main(["fit", *_configs(method), *overrides,
                 "--data.init_args.root", str(root), "--data.init_args.crop_size", "64",
                 "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
                 "--trainer.default_root_dir", str(out), "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                 "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                 "--trainer.callbacks", "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
                 f"init_args: {{dirpath: {out}/ckpt, save_last: true}}}}, "
                 "{class_path: tests.test_net_injection.Probe}]"]) == 0
    [model] = Probe.models
    return model, out / "ckpt" / "last.ckpt"


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_smp_override_reaches_the_network_and_the_checkpoint_rebuilds_it(tiny_potsdam, tmp_path):
    """``--model.init_args.net.init_args.*`` builds that network (smp's ``encoder`` alias included), and
    ``load_from_checkpoint`` rebuilds it from the hparams LightningCLI recorded."""
    model, checkpoint = _fit("unet", tiny_potsdam, tmp_path, "--model.init_args.net.init_args.encoder",
                             "tu-test_resnet", "--model.init_args.net.init_args.arch_kwargs",
                             '{"encoder_depth": 3, "decoder_channels": [16, 8, 8]}')
    assert model.net.backbone_name == "tu-test_resnet" and model.net.arch == "unet"
    assert model.net.model.decoder.blocks[-1].conv2[0].out_channels == 8
    hparams = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert hparams["_instantiator"] == "lightning.pytorch.cli.instantiate_module"
    assert hparams["net"]["class_path"] == "rsseg.models.SMPNet"
    assert hparams["net"]["init_args"]["encoder"] == "tu-test_resnet"
    loaded = SMPSegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu")
    assert loaded.net.backbone_name == "tu-test_resnet" and loaded.num_classes == 6
    assert _same_state(loaded, model)


def test_d2ls_override_reaches_the_network_and_the_checkpoint_rebuilds_it(tiny_potsdam, tmp_path):
    model, checkpoint = _fit("d2ls", tiny_potsdam, tmp_path, "--model.init_args.net.init_args.backbone",
                             "test_convnext", "--model.init_args.net.init_args.embed_dim", "32",
                             "--model.init_args.net.init_args.num_heads", "2",
                             "--model.init_args.net.init_args.num_stages", "2")
    assert isinstance(model.net, D2LS)
    assert len(model.net.interactor.stages) == 2 and model.net.generator.dim == 32
    loaded = D2LSTask.load_from_checkpoint(checkpoint, map_location="cpu")
    assert len(loaded.net.interactor.stages) == 2
    assert _same_state(loaded, model)


# --------------------------------------------------------------------------------------------------
# Outside the CLI


def test_direct_construction_stores_the_network_config_and_round_trips(tmp_path):
    net = functools.partial(SMPNet, **TINY_SMP)
    task = SMPSegmentationTask(net=net, num_classes=4)
    assert task.hparams["net"]["class_path"] == "rsseg.models.baselines.SMPNet"
    assert task.hparams["net"]["init_args"]["backbone"] == "tu-test_resnet"
    assert task.hparams["net"]["init_args"]["arch"] == "unet"  # the defaults too: a complete record
    trainer = Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "direct.ckpt")
    loaded = SMPSegmentationTask.load_from_checkpoint(tmp_path / "direct.ckpt", map_location="cpu")
    assert _same_state(loaded, task)
    # the config form is accepted as ``net`` too
    again = SMPSegmentationTask(net=task.hparams["net"], num_classes=4)
    assert again.net.backbone_name == "tu-test_resnet"


def test_net_of_another_network_class_is_refused():
    with pytest.raises(TypeError, match="subclass of rsseg.models.d2ls.D2LS"):
        D2LSTask(net=functools.partial(SMPNet, **TINY_SMP), num_classes=4)
    with pytest.raises(TypeError, match="not an imported subclass"):
        D2LSTask(net={"class_path": "os.system", "init_args": {}}, num_classes=4)


# --------------------------------------------------------------------------------------------------
# smp's names as aliases


def test_smp_aliases_map_onto_backbone_and_pretrained():
    net = SMPNet(4, encoder="tu-test_resnet", encoder_weights=None, arch_kwargs=TINY_SMP["arch_kwargs"])
    assert net.backbone_name == "tu-test_resnet" and net.weights is None
    assert SMPNet(4, encoder_name="tu-test_resnet", arch_kwargs=TINY_SMP["arch_kwargs"]).backbone_name == \
        "tu-test_resnet"
    assert list(net.backbone.parameters()) == list(net.encoder.parameters())


@pytest.mark.parametrize("kwargs", [
    {"backbone": "resnet34", "encoder": "tu-test_resnet"},
    {"encoder": "tu-test_resnet", "encoder_name": "tu-test_resnet"},
    {"pretrained": True, "encoder_weights": "imagenet"},
])
def test_smp_alias_and_name_together_is_an_error(kwargs):
    with pytest.raises(ValueError, match="give only (backbone|pretrained)"):
        SMPNet(4, **kwargs)


# --------------------------------------------------------------------------------------------------
# Checkpoints from before the change (written by the pre-issue-19 code, see tests/data/legacy/README.md)

LEGACY_TASKS = {"unet_smoke": SMPSegmentationTask, "d2ls_smoke": D2LSTask}


def _fixed_input() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _logits(task) -> torch.Tensor:
    with torch.no_grad():
        return task.eval()(_fixed_input())


@pytest.mark.parametrize("name", sorted(LEGACY_TASKS))
def test_legacy_checkpoint_loads_with_the_same_logits(name):
    task = LEGACY_TASKS[name].load_from_checkpoint(LEGACY / f"{name}.ckpt", map_location="cpu")
    assert "net" in task.hparams and "backbone" not in task.hparams
    torch.testing.assert_close(_logits(task), torch.load(LEGACY / f"{name}_logits.pt"), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(LEGACY_TASKS))
def test_converted_legacy_checkpoint_is_in_the_new_layout(name, tmp_path):
    converted = convert_legacy_checkpoint(LEGACY / f"{name}.ckpt", tmp_path / "new.ckpt")
    checkpoint = torch.load(converted, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["net"]["init_args"]["backbone"] in ("tu-test_resnet", "test_convnext")
    assert not {"backbone", "encoder", "encoder_weights", "embed_dim"} & set(hparams)
    if name == "unet_smoke":
        assert all(k.startswith("net.model.") for k in checkpoint["state_dict"] if k.startswith("net."))
    task = LEGACY_TASKS[name].load_from_checkpoint(converted, map_location="cpu")
    torch.testing.assert_close(_logits(task), torch.load(LEGACY / f"{name}_logits.pt"), rtol=0, atol=0)


def test_legacy_hparams_conversion_renames_smp_arguments():
    old = {"_class_path": "rsseg.tasks.SMPSegmentationTask", "arch": "unet", "encoder": "resnet18",
           "encoder_weights": "imagenet", "in_channels": 3, "arch_kwargs": None, "lr": 1e-3, "num_classes": 6}
    new = convert_legacy_hparams(old)
    assert new["net"] == {"class_path": "rsseg.models.SMPNet", "init_args": {
        "arch": "unet", "backbone": "resnet18", "pretrained": "imagenet", "in_channels": 3, "arch_kwargs": None}}
    assert new["lr"] == 1e-3 and new["num_classes"] == 6 and "encoder" not in new
    assert convert_legacy_hparams(new) == new  # the new layout is left alone


def test_legacy_checkpoint_tests_through_the_cli(tiny_potsdam, tmp_path, caplog):
    """`rsseg test --ckpt_path <checkpoint of the old layout>`: its flat settings are read in the new layout, so
    the settings the command line does not give (here the tiny arch_kwargs) come from it and its weights load."""
    code = main(["test", "--config", str(REPO / "experiments/unet/potsdam.yaml"),
                 "--config", str(REPO / "experiments/unet/smoke.yaml"), "--data.init_args.root", str(tiny_potsdam),
                 "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
                 "--model.init_args.net.init_args.backbone", "tu-test_resnet", "--trainer.logger", "false",
                 "--trainer.accelerator", "cpu", "--trainer.limit_test_batches", "1",
                 "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(LEGACY / "unet_smoke.ckpt")])
    assert code == 0
    used = yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["init_args"]["net"]["init_args"]
    assert used["arch_kwargs"] == {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}
    assert "no longer has" not in caplog.text  # nothing of the old layout was dropped
