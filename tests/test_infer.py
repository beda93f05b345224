"""``rsseg infer`` and ``PredictionWriter``: streamed windows equal whole-image inference, GeoTIFFs keep their grid,
predictions equal ``rsseg predict``'s, bad inputs are named and skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image
from torch import nn

from rsseg.cli import main
from rsseg.data.datasets.potsdam import PotsdamDataModule
from rsseg.infer.scene import WindowGrid, stream_scene_logits
from rsseg.models.sliding_window import sliding_window_logits
from tests.test_cli import _tiny_args

# a rotated/sheared grid with non-square pixels in UTM 32N: a writer that drops or rebuilds the transform fails
TRANSFORM = Affine(0.3, 0.05, 368_000.0, 0.02, -0.25, 5_810_000.0)
CRS = "EPSG:32632"
FULL_PATCH = "top_potsdam_2_13_00000_00000"  # a test patch without padding (the tile is 230×211)


class Context(nn.Module):
    """A 5×5 convolution: a window's logits depend on its neighbourhood, so the grid and the blend matter."""

    def __init__(self, channels: int = 3, classes: int = 4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(channels, classes, 5, padding=2)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("size,window,overlap", [((150, 230), 64, 16), ((97, 64), 32, 31), ((40, 300), 64, 8),
                                                 ((150, 40), 64, 16), ((130, 130), 64, 0)])
@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
def test_streamed_windows_equal_sliding_windows_over_the_whole_image(size, window, overlap, blend):
    net, image = Context(), torch.randn(3, *size)
    rows_read, emitted = [], []
    grid = WindowGrid(*size, window, overlap)

    def read_rows(row, rows):
        rows_read.append(rows)
        return image[:, row : row + rows]

    stream_scene_logits(net, read_rows, lambda row, logits: emitted.append((row, logits)), grid, blend=blend,
                        batch_size=3)
    expected = sliding_window_logits(net, image[None], window, overlap, batch_size=3, blend=blend)[0]
    starts = [row for row, _ in emitted]
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert all(row + logits.shape[1] == nxt for (row, logits), nxt in zip(emitted, [*starts[1:], size[0]],
                                                                           strict=True))  # contiguous, complete
    torch.testing.assert_close(torch.cat([logits for _, logits in emitted], 1), expected, rtol=1e-5, atol=1e-6)
    assert max(rows_read) <= window and max(logits.shape[1] for _, logits in emitted) <= window  # bounded


def test_a_scene_that_fits_one_window_goes_through_whole_and_unpadded():
    net, image = Context(), torch.randn(3, 50, 61)
    emitted = []
    stream_scene_logits(net, lambda row, rows: image[:, row : row + rows], lambda r, x: emitted.append((r, x)),
                        WindowGrid(50, 61, 64, 16))
    [(row, logits)] = emitted
    assert row == 0
    torch.testing.assert_close(logits, net(image[None])[0])


# --------------------------------------------------------------------------------------------------------------
# end to end, with a checkpoint trained for two steps on the tiny synthetic Potsdam


@pytest.fixture(scope="module")
def trained(tiny_potsdam, tmp_path_factory):
    out = tmp_path_factory.mktemp("infer_fit")
    main(["fit", *_tiny_args(tiny_potsdam, out), "--trainer.max_steps", "2", "--trainer.logger", "false",
          "--model.init_args.inference_window", "64", "--model.init_args.inference_overlap", "16"])
    [ckpt] = sorted(out.rglob("last.ckpt"))
    return ckpt


def _patch_pixels(root, patch_id: str = FULL_PATCH) -> np.ndarray:
    return np.asarray(Image.open(root / "test" / "images" / f"{patch_id}.png"))  # H×W×3 uint8


def _write_geotiff(path, pixels: np.ndarray, **extra) -> None:
    """H×W×C pixels as a GeoTIFF on TRANSFORM/CRS."""
    height, width, bands = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands, dtype=pixels.dtype,
                       crs=CRS, transform=TRANSFORM, **extra) as dataset:
        dataset.write(np.moveaxis(pixels, -1, 0))


def test_checkpoints_describe_their_input(trained):
    spec = torch.load(trained, map_location="cpu", weights_only=True)["rsseg_input"]
    data = PotsdamDataModule(root="unused")
    assert spec == json.loads(json.dumps(data.input_spec()))  # plain values, those the datamodule fed
    assert spec["classes"][5] == "clutter" and spec["palette"][5] == [255, 0, 0] and spec["value_scale"] == 255


def test_infer_writes_the_scenes_grid_and_equals_rsseg_predict(trained, tiny_potsdam, tmp_path, capsys):
    scene = tmp_path / "scenes" / "patch.tif"
    scene.parent.mkdir()
    _write_geotiff(scene, _patch_pixels(tiny_potsdam))
    out = tmp_path / "labels"
    assert main(["infer", "--ckpt", str(trained), "--input", str(scene), "--output", str(out), "--batch", "1",
                 "--preview", "--probabilities"]) == 0
    assert "wrote 3 file(s)" in capsys.readouterr().out
    with rasterio.open(out / "patch.tif") as labels:
        assert (labels.crs.to_string(), labels.transform) == (CRS, TRANSFORM)
        assert (labels.height, labels.width, labels.count, labels.dtypes) == (128, 128, 1, ("uint8",))
        assert labels.nodata == 255
        colours = labels.colormap(1)
        assert [colours[i][:3] for i in range(6)] == [tuple(c) for c in PotsdamDataModule(root="x").spec.palette]
        inferred = labels.read(1)
    with rasterio.open(out / "patch_prob.tif") as probabilities:
        p = probabilities.read().astype(int)
        assert p.shape == (6, 128, 128) and np.abs(p.sum(0) - 255).max() <= 6  # rounded probabilities sum to 1
        at_label = np.take_along_axis(p, inferred[None].astype(np.int64), 0)[0]
        assert (at_label >= p.max(0) - 1).all()  # the written class is the most probable, up to rounding
        assert probabilities.transform == TRANSFORM
    assert Image.open(out / "patch_preview.png").mode == "RGB"

    # the same pixels through rsseg predict (patches of the prepared root, written by the PredictionWriter)
    predicted_dir = tmp_path / "predict"
    assert main(["predict", *_tiny_args(tiny_potsdam, predicted_dir), "--ckpt_path", str(trained),
                 "--trainer.logger", "false", "--data.init_args.eval_batch_size", "1"]) == 0
    predicted = np.asarray(Image.open(predicted_dir / "predictions" / "test" / f"{FULL_PATCH}.png"))
    assert len(np.unique(predicted)) > 1  # a real prediction, not a constant map
    np.testing.assert_array_equal(inferred, predicted)


def test_sixteen_bit_scenes_are_scaled_to_the_training_range(trained, tiny_potsdam, tmp_path, capsys):
    pixels = _patch_pixels(tiny_potsdam)
    _write_geotiff(tmp_path / "eight.tif", pixels)
    _write_geotiff(tmp_path / "sixteen.tif", pixels.astype(np.uint16) * 257)  # 255 → 65535: the same brightness
    out = tmp_path / "labels"
    assert main(["infer", "--ckpt", str(trained), "--input", str(tmp_path / "eight.tif"), "--output", str(out)]) == 0
    assert main(["infer", "--ckpt", str(trained), "--input", str(tmp_path / "sixteen.tif"), "--output", str(out)]) == 1
    assert "uint16 pixels" in capsys.readouterr().err and not (out / "sixteen.tif").exists()
    assert main(["infer", "--ckpt", str(trained), "--input", str(tmp_path / "sixteen.tif"), "--output", str(out),
                 "--value-scale", "65535"]) == 0
    with rasterio.open(out / "eight.tif") as eight, rasterio.open(out / "sixteen.tif") as sixteen:
        np.testing.assert_array_equal(eight.read(1), sixteen.read(1))
    assert main(["infer", "--ckpt", str(trained), "--input", str(tmp_path / "sixteen.tif"), "--output",
                 str(tmp_path / "wrong"), "--value-scale", "255"]) == 0  # a wrong scale changes the answer
    with rasterio.open(out / "eight.tif") as eight, rasterio.open(tmp_path / "wrong" / "sixteen.tif") as wrong:
        assert not np.array_equal(eight.read(1), wrong.read(1))


def test_plain_images_give_palette_pngs_and_nodata_stays_nodata(trained, tiny_potsdam, tmp_path):
    pixels = _patch_pixels(tiny_potsdam)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    holed = pixels.copy()
    holed[:20, :30] = 0
    _write_geotiff(tmp_path / "holed.tif", holed, nodata=0)
    assert main(["infer", "--ckpt", str(trained), "--input", str(tmp_path / "photo.png"), str(tmp_path / "holed.tif"),
                 "--output", str(tmp_path / "out")]) == 0
    png = Image.open(tmp_path / "out" / "photo.png")
    assert png.mode == "P" and png.size == (128, 128)
    assert png.getpalette()[15:18] == [255, 0, 0]  # class 5, clutter, in red
    with rasterio.open(tmp_path / "out" / "holed.tif") as labels:
        holed_labels = labels.read(1)
    assert (holed_labels[:20, :30] == 255).all() and (holed_labels[20:] < 6).all()
    with rasterio.open(tmp_path / "out" / "holed.tif") as labels:
        assert labels.nodata == 255


def test_bad_inputs_are_named_and_the_others_still_run(trained, tiny_potsdam, tmp_path, capsys):
    pixels = _patch_pixels(tiny_potsdam)
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    _write_geotiff(scenes / "a_good.tif", pixels)
    _write_geotiff(scenes / "b_two_bands.tif", pixels[..., :2])
    (scenes / "c_broken.tif").write_text("not an image")
    _write_geotiff(scenes / "d_good.tif", pixels[:100, :90])
    out = tmp_path / "out"
    assert main(["infer", "--ckpt", str(trained), "--input", str(scenes), str(tmp_path / "missing.tif"),
                 "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{scenes / 'b_two_bands.tif'}: 2 bands, but the model was trained on 3" in err
    assert f"{scenes / 'c_broken.tif'}: not a readable image" in err
    assert f"{tmp_path / 'missing.tif'}: no such file or folder" in err
    assert sorted(p.name for p in out.iterdir()) == ["a_good.tif", "d_good.tif"]  # no partial files left
    assert main(["infer", "--ckpt", str(trained), "--input", str(scenes / "b_two_bands.tif"), "--output", str(out),
                 "--bands", "1,2,2"]) == 0  # --bands picks (here repeats) the bands the model needs


def test_a_checkpoint_without_an_input_description_is_refused(trained, tmp_path, capsys):
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    del checkpoint["rsseg_input"]
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    assert main(["infer", "--ckpt", str(old), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert f"{old}: the checkpoint does not say what input its model was trained on" in capsys.readouterr().err


def test_the_exported_weights_infer_the_same(trained, tiny_potsdam, tmp_path):
    exported = tmp_path / "unet.pt"
    assert main(["export", "--ckpt", str(trained), "--out", str(exported)]) == 0
    _write_geotiff(tmp_path / "scene.tif", _patch_pixels(tiny_potsdam))
    for ckpt, out in ((trained, "full"), (exported, "light")):
        assert main(["infer", "--ckpt", str(ckpt), "--input", str(tmp_path / "scene.tif"), "--output",
                     str(tmp_path / out)]) == 0
    with rasterio.open(tmp_path / "full" / "scene.tif") as full:
        with rasterio.open(tmp_path / "light" / "scene.tif") as light:
            np.testing.assert_array_equal(full.read(1), light.read(1))


# --------------------------------------------------------------------------------------------------------------
# PredictionWriter on its own


class _GeoSamples(torch.utils.data.Dataset):
    """Two 'scenes' whose meta carries their grid, and two referring-style samples of one image."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        meta = {"id": f"scene{index}", "crs": CRS, "transform": ",".join(map(str, TRANSFORM[:6]))} if index < 2 \
            else {"id": "image7", "sentence_index": index - 2}
        return {"image": torch.full((3, 8, 12), float(index)), "meta": meta}


class _Constant(nn.Module):
    def forward(self, x):  # class = the sample's index (its constant pixel value), so files can be told apart
        return torch.nn.functional.one_hot(x[:, 0].long(), 6).permute(0, 3, 1, 2).float()


def test_the_prediction_writer_keeps_grids_and_names_sentences(tmp_path):
    from lightning import LightningModule, Trainer

    from rsseg.infer import PredictionWriter

    class Task(LightningModule):
        num_classes = 6

        def __init__(self):
            super().__init__()
            self.net = _Constant()

        def predict_step(self, batch, batch_idx):
            return {"pred": self.net(batch["image"]).argmax(1).to(torch.uint8), "meta": batch["meta"]}

    loader = torch.utils.data.DataLoader(_GeoSamples(), batch_size=2)  # batches of alike samples
    trainer = Trainer(accelerator="cpu", logger=False, callbacks=[PredictionWriter()], default_root_dir=tmp_path,
                      enable_progress_bar=False)
    trainer.predict(Task(), loader, return_predictions=False)
    folder = tmp_path / "predictions" / "predict"
    assert sorted(p.name for p in folder.iterdir()) == ["image7_s0.png", "image7_s1.png", "scene0.tif", "scene1.tif"]
    with rasterio.open(folder / "scene1.tif") as scene:
        assert (scene.crs.to_string(), scene.transform, scene.shape) == (CRS, TRANSFORM, (8, 12))
        assert (scene.read(1) == 1).all()
    assert (np.asarray(Image.open(folder / "image7_s1.png")) == 3).all()


def test_only_rssegs_image_segmentation_tasks_are_loaded(tmp_path):
    from rsseg.checkpoints import CheckpointError
    from rsseg.infer.model import task_class
    from rsseg.tasks import SMPSegmentationTask

    path = tmp_path / "x.ckpt"
    assert task_class(path, {"_class_path": "rsseg.tasks.SMPSegmentationTask"}) is SMPSegmentationTask
    with pytest.raises(CheckpointError, match="refines the coarse maps of another method"):
        task_class(path, {"_class_path": "rsseg.tasks.IDGBRTask"})
    with pytest.raises(CheckpointError, match="not a semantic segmentation task"):
        task_class(path, {"_class_path": "rsseg.tasks.DANetTask"})
    with pytest.raises(CheckpointError, match="rsseg infer loads rsseg's tasks only"):
        task_class(path, {"_class_path": "os.system"})  # never imported
