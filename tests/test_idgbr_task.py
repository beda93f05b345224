"""IDGBR's Lightning stages: the label embedding network and the refiner (tiny configs, CPU)."""

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from rsseg.data.refinement.random_labels import RandomLabelMapDataModule
from rsseg.tasks.idgbr import IDGBRTask, LabelEmbeddingTask, LatentAutoencoderTask, load_label_embedding
from tests.idgbr_tiny import TINY_DINO, TINY_VAE, tiny_idgbr_net


def _trainer(tmp_path, **kwargs):
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return L.Trainer(**{**defaults, **kwargs})


def test_label_embedding_learns_to_reconstruct_random_maps(tmp_path):
    torch.manual_seed(0)
    data = RandomLabelMapDataModule(num_classes=6, size=16, batch_size=8, train_samples=800, val_samples=32)
    task = LabelEmbeddingTask(num_classes=6, lr=2e-2, warmup_steps=0)
    trainer = _trainer(tmp_path, max_steps=100, enable_checkpointing=True, val_check_interval=100)
    before = trainer.validate(task, datamodule=data, verbose=False)[0]["val/accuracy"]
    trainer.fit(task, datamodule=data)
    after = trainer.validate(task, datamodule=data, verbose=False)[0]
    assert before < 0.6 and after["val/accuracy"] > 0.99  # noise-free E_e → D_e round trip
    assert after["val/noisy_accuracy"] > 0.5  # under the paper's σ = 0.5 training noise
    loaded = load_label_embedding(trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback
                                  .last_model_path or _save(trainer, tmp_path), 6)
    labels = torch.randint(0, 6, (2, 8, 8))
    assert torch.equal(loaded.decode(loaded.encode(labels)).argmax(1), labels)
    with pytest.raises(ValueError, match="dataset has 3"):
        load_label_embedding(_save(trainer, tmp_path), 3)


def _save(trainer, tmp_path):
    path = tmp_path / "label_embedding.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


class _Refinement(Dataset):
    """Synthetic (image, mask, coarse) samples: the coarse map is the mask with some pixels shifted."""

    def __init__(self, n=4, size=32, classes=3):
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(n):
            mask = torch.randint(0, classes, (size // 8, size // 8), generator=g).repeat_interleave(8, 0)
            mask = mask.repeat_interleave(8, 1)
            image = torch.randn(3, size, size, generator=g) + mask.float()
            mask[0, 0] = 255  # an ignored pixel
            coarse = torch.roll(mask.clamp(max=classes - 1), 2, dims=1)
            self.items.append({"image": image, "mask": mask, "coarse": coarse, "meta": {"id": f"s{i}"}})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _RefinementData(L.LightningDataModule):
    def __init__(self, size=32):
        super().__init__()
        self.size = size

    def _loader(self):
        return DataLoader(_Refinement(size=self.size), batch_size=2)

    train_dataloader = val_dataloader = test_dataloader = predict_dataloader = _loader


def _task(vae=None, **kwargs):
    args = dict(net=tiny_idgbr_net(vae=vae), num_classes=3, repa_model="tiny", repa_pretrained=False,
                repa_config=TINY_DINO, repa_hidden=16, inference_steps=2, test_per_class_wfm=False, wfm_workers=0)
    return IDGBRTask(**{**args, **kwargs})


def test_repa_runs_for_its_steps_then_releases_dino(tmp_path):
    torch.manual_seed(0)
    task = _task(repa_steps=2)
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append((trainer.global_step, "train/loss_repa" in trainer.callback_metrics and
                         module._dino is not None, module._dino is not None))
            trainer.callback_metrics.pop("train/loss_repa", None)

    _trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[Record()]).fit(task, _RefinementData())
    assert [s for s, repa, _ in seen if repa] == [1, 2]  # the first two optimiser steps align
    assert not any(alive for step, _, alive in seen if step >= 4)
    assert task._dino is None
    assert not any(k.startswith("_dino") for k in task.state_dict())  # DINO is never checkpointed
    assert any(k.startswith("repa_projector.") for k in task.state_dict())


def test_training_step_loss_is_eq_14(tmp_path):
    torch.manual_seed(0)
    task = _task(repa_weight=0.0)
    assert task.repa_projector is None
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(task, _RefinementData())
    metrics = trainer.callback_metrics
    assert "train/loss_repa" not in metrics
    torch.testing.assert_close(metrics["train/loss"], metrics["train/loss_mse"])


def test_test_and_predict_give_label_maps_of_the_input_size(tmp_path):
    torch.manual_seed(0)
    task = _task(inference_window=16, inference_blend="uniform")  # 32² inputs: four windows of 16²
    trainer = _trainer(tmp_path, limit_test_batches=1, limit_predict_batches=1)
    results = trainer.test(task, _RefinementData(), verbose=False)[0]
    assert 0 <= results["test/mIoU"] <= 1 and "test/boundary_WF" in results
    predictions = trainer.predict(task, _RefinementData())
    assert predictions[0]["pred"].shape == (2, 32, 32) and predictions[0]["pred"].dtype == torch.uint8
    again = trainer.predict(task, _RefinementData())
    assert torch.equal(predictions[0]["pred"], again[0]["pred"])  # seeded sampling


def test_vae_input_maps_the_normalised_image_to_unit_range():
    task = _task(repa_weight=0.0)
    raw = torch.rand(1, 3, 4, 4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(task._vae_image((raw - mean) / std), raw * 2 - 1)
    code_style = _task(repa_weight=0.0, vae_input="imagenet")
    assert torch.equal(code_style._vae_image(raw), raw)
    with pytest.raises(ValueError, match="vae_input"):
        _task(vae_input="rgb")


REPO = Path(__file__).resolve().parents[1]


def test_label_embedding_config_trains_through_the_cli(tmp_path):
    from rsseg.cli import main

    main(["fit", "--config", str(REPO / "experiments/idgbr/label_embedding_vaihingen.yaml"),
          "--config", str(REPO / "experiments/idgbr/label_embedding_smoke.yaml"),
          "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu",
          "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"])
    [checkpoint] = tmp_path.rglob("last.ckpt")
    embedding = load_label_embedding(str(checkpoint), 6)
    labels = torch.randint(0, 6, (4, 32, 32), generator=torch.Generator().manual_seed(1))
    accuracy = (embedding.decode(embedding.encode(labels)).argmax(1) == labels).float().mean()
    assert accuracy > 0.99


@pytest.mark.parametrize("dataset", ["potsdam", "vaihingen", "chn6_cug"])
def test_refiner_configs_parse(dataset, capsys):
    from rsseg.cli import main

    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(REPO / f"experiments/idgbr/{dataset}.yaml"),
              "--config", str(REPO / "experiments/idgbr/smoke.yaml"), "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "rsseg.tasks.IDGBRTask" in printed and "rsseg.data.CoarseMapDataModule" in printed


def test_a_checkpoint_trained_with_repa_loads_without_it(tmp_path):
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(_task(repa_steps=5), _RefinementData())
    trainer.save_checkpoint(tmp_path / "refiner.ckpt")
    loaded = IDGBRTask.load_from_checkpoint(tmp_path / "refiner.ckpt", repa_weight=0.0)
    assert loaded.repa_projector is None
    assert torch.equal(loaded.net.unet.conv_in.weight, trainer.lightning_module.net.unet.conv_in.weight)


def test_latent_autoencoder_fits_and_exports_a_vae_idgbr_loads(tmp_path):
    torch.manual_seed(0)
    embedding = LabelEmbeddingTask(num_classes=3)
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(embedding, RandomLabelMapDataModule(3, size=8, train_samples=8))
    trainer.save_checkpoint(tmp_path / "embedding.ckpt")
    task = LatentAutoencoderTask(str(tmp_path / "embedding.ckpt"), num_classes=3, vae_config=TINY_VAE,
                                 export=str(tmp_path / "vae"))
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    _trainer(tmp_path, max_steps=40, callbacks=[Record()]).fit(task, _RefinementData())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    refiner = _task(repa_weight=0.0, vae=str(tmp_path / "vae"))
    assert refiner.net.vae.config.scaling_factor == pytest.approx(task.vae.config.scaling_factor)
    assert refiner.net.vae.config.scaling_factor != pytest.approx(0.18215)
    mask = _Refinement()[0]["mask"].clamp(max=2)[None]
    with torch.no_grad():
        latents = refiner.net.vae.encode(task.embedding.encode(mask)).latent_dist.mode()
    assert latents.std() * refiner.net.vae.config.scaling_factor == pytest.approx(1.0, rel=0.5)


# --- the label embedding checkpoint of a pretrained refiner ------------------------------------------------
def test_a_pretrained_refiner_without_a_label_embedding_checkpoint_is_an_error(monkeypatch):
    """80k steps against an untrained E_e/D_e would be wasted: the error names the stage that makes one."""
    from tests.idgbr_tiny import tiny_stable_diffusion

    kwargs = tiny_stable_diffusion(monkeypatch)
    net = {"class_path": "rsseg.models.IDGBR", "init_args": {"pretrained": True, "beta_schedule": "scaled_linear",
                                                              "beta_start": 0.00085, "beta_end": 0.012,
                                                              "num_train_timesteps": 1000, **kwargs}}
    with pytest.raises(ValueError, match=r"rsseg fit --config experiments/idgbr/label_embedding_<dataset>\.yaml"):
        IDGBRTask(net=net, num_classes=3, repa_weight=0.0)
    allowed = IDGBRTask(net=net, num_classes=3, repa_weight=0.0, allow_untrained_label_embedding=True)
    assert allowed.net.label_embedding.num_classes == 3
    assert _task(repa_weight=0.0).net.label_embedding.num_classes == 3  # random-init networks: allowed


def test_a_random_refiners_bench_row_says_what_it_is():
    note = _task(inference_steps=3).bench_note  # tiny_idgbr_net: pretrained false
    assert "random tiny diffusion UNet" in note and "sampled with 3 DDIM steps" in note


def test_smoke_profile_allows_the_untrained_label_embedding_explicitly():
    import yaml

    smoke = yaml.safe_load((REPO / "experiments/idgbr/smoke.yaml").read_text())
    assert smoke["model"]["init_args"]["allow_untrained_label_embedding"] is True


# --- REPA steps: §III says 500, §IV-B and the released code 200 ----------------------------------------------
def test_repa_steps_default_to_the_released_codes_200():
    import inspect

    import yaml

    assert inspect.signature(IDGBRTask).parameters["repa_steps"].default == 200
    for dataset in ("potsdam", "vaihingen", "chn6_cug"):
        config = yaml.safe_load((REPO / f"experiments/idgbr/{dataset}.yaml").read_text())
        assert config["model"]["init_args"]["repa_steps"] == 200, dataset
    readme = (REPO / "README.md").read_text()
    assert "first 500 steps" not in readme
