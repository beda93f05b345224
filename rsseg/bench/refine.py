"""The refiner's rows of ``rsseg bench``: each method's coarse maps, refined by IDGBR.

Per bench run, once: the label embedding network (stage 0), and where the profile asks for it
(``refiner_vae``, offline runs without Stable Diffusion's weights) a VAE fitted to the dataset. Per method:
its train and test predictions written as coarse maps under ``<run>/coarse/<method>`` (the user's data
folder is left untouched), then IDGBR fitted and tested on them, reported as ``idgbr(<method>)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from rsseg.bench.plan import BenchPlan, merged_config
from rsseg.bench.runs import Tracking, fit_and_test, fit_stage
from rsseg.data.refinement.coarse import read_record

log = logging.getLogger(__name__)


def write_coarse_maps(cli, checkpoint: str, name: str, output_root: Path) -> Path:
    """Predict the train, val (where the protocol has one) and test splits of a fitted and tested run's
    datamodule with ``checkpoint`` (its current weights when empty) into ``<output_root>/coarse/<name>``,
    the folder it returns. The refiner's datamodule wraps every split it sets up, val included."""
    from rsseg.data import CoarseMapWriter

    trainer, data = cli.trainer, cli.datamodule
    writer = CoarseMapWriter(name, output_root=str(output_root))
    trainer.callbacks.append(writer)
    original, loggers = data.predict_split, trainer.loggers
    trainer.loggers = []  # the run's loggers are closed (a finished W&B run refuses even its hparams)
    try:
        for split in ("train", "val", "test") if data.val_dataset is not None else ("train", "test"):
            data.predict_split = split
            log.info("writing %s coarse maps of the %s split", name, split)
            trainer.predict(cli.model, datamodule=data, ckpt_path=checkpoint or None, return_predictions=False)
    finally:
        data.predict_split, trainer.loggers = original, loggers
        trainer.callbacks.remove(writer)
    return writer.folder


def stage_key(args: list[str], root: Path) -> str:
    """What a fitted stage depends on: its arguments with the text of every config file they name, the data
    root's checksum, rsseg's code and the library versions; 16 hex digits."""
    from rsseg.fingerprint import code_fingerprint
    from rsseg.manifest import data_checksum, package_versions

    files = {arg: Path(arg).read_text() for arg in args if arg.endswith((".yaml", ".yml")) and Path(arg).is_file()}
    identity = (args, files, data_checksum(root), code_fingerprint(), package_versions())
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RefinerStages:
    """IDGBR across one bench run: its shared stages fitted on first use, then one refined row per method.

    With a ``cache`` folder, a fitted stage (the label embedding checkpoint, the VAE folder) is kept under
    ``<cache>/refiner_stages/<stage>-<key>`` (:func:`stage_key`) and the next bench with the same stage
    arguments, data and code reuses it instead of fitting it again, as prepared data is reused."""

    def __init__(self, plan: BenchPlan, root: Path, run_dir: Path, tracking: Tracking, refiner_args: list[str] = (),
                 stage_args: list[str] = (), cache: Path | None = None) -> None:
        self.plan, self.root, self.run_dir, self.tracking = plan, Path(root), Path(run_dir), tracking
        self.refiner_args, self.stage_args = list(refiner_args), list(stage_args)
        self.cache = None if cache is None else Path(cache) / "refiner_stages"
        self.coarse_root = self.run_dir
        self._shared_args: list[str] | None = None

    def run(self, method: str) -> tuple[dict, list[dict]]:
        """Fit and test the refiner on ``method``'s coarse maps (written by ``write_coarse_maps``): its row
        and its first test samples."""
        name = f"{self.plan.refiner}({method})"
        folder = self.coarse_root / "coarse" / method
        record = read_record(folder)
        if record is None:
            raise FileNotFoundError(f"{folder}: no coarse maps of {method} to refine")
        # the pair is scored on the same split: the method's protocol, whatever the refiner's config says
        protocol = record["protocol"]
        args = [*self.plan.refiner_args(), "--data.init_args.data.init_args.root", str(self.root),
                "--data.init_args.data.init_args.protocol", protocol, "--data.init_args.coarse", str(folder),
                *self.shared_args(protocol), *self.refiner_args]
        row, _, _, samples = fit_and_test(name, args, self.run_dir, self.tracking)
        stages = [*self.plan.label_embedding_configs, self.plan.refiner_vae]
        return {"method": name, "refines": method, "configs": [str(f) for f in self.plan.refiner_configs],
                "stage_configs": [str(f) for f in stages if f], **row}, samples

    def shared_args(self, protocol: str) -> list[str]:
        """The refiner's arguments for the label embedding checkpoint and (its network's ``vae``) the VAE,
        fitted on the first call (the VAE on the ``protocol``'s train split)."""
        if self._shared_args is None:
            embedding = self._fit_label_embedding()
            self._shared_args = ["--model.init_args.label_embedding", embedding]
            if self.plan.refiner_vae is not None:
                self._shared_args += ["--model.init_args.net.init_args.vae", self._fit_vae(embedding, protocol)]
        return self._shared_args

    def _fit_label_embedding(self) -> str:
        name = f"{self.plan.refiner}-label-embedding"
        args = [*self.plan.label_embedding_args(), *self.stage_args]

        def fit() -> Path:
            checkpoint = fit_stage(name, args, self.run_dir, self.tracking)
            if not checkpoint:
                raise RuntimeError(f"the label embedding stage ({self.plan.label_embedding_configs[0]}) saved no "
                                   "checkpoint; give its config a ModelCheckpoint callback")
            return Path(checkpoint)

        return str(self._cached(name, args, "label_embedding.ckpt", fit))

    def _fit_vae(self, embedding: str, protocol: str) -> str:
        name = f"{self.plan.refiner}-vae"
        export = self.run_dir / name / "vae"
        args = [*self.vae_args(embedding, protocol, export), *self.stage_args]
        key_args = [a if a != str(export) else "<export>" for a in args]  # the run's own folder is no input

        def fit() -> Path:
            fit_stage(name, args, self.run_dir, self.tracking)
            return export

        return str(self._cached(name, key_args, "vae", fit))

    def _cached(self, name: str, key_args: list[str], entry: str, fit) -> Path:
        """``fit()``'s result (a file or folder), from the cache when a bench fitted it with the same inputs;
        else fitted now and copied into the cache (whole, or not at all)."""
        if self.cache is None:
            return fit()
        folder = self.cache / f"{name}-{stage_key(key_args, self.root)}"
        if (folder / entry).exists():
            log.info("%s: reusing %s (fitted by an earlier bench with the same arguments, data and code)",
                     name, folder / entry)
            print(f"==> rsseg bench: {name} — reused from {folder}", flush=True)
            return folder / entry
        result = fit()
        staging = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if result.is_dir():
            shutil.copytree(result, staging / entry)
        else:
            shutil.copy2(result, staging / entry)
        shutil.rmtree(folder, ignore_errors=True)
        staging.replace(folder)
        return folder / entry

    def vae_args(self, embedding: str, protocol: str, export: Path) -> list[str]:
        """The VAE stage of offline runs: ``LatentAutoencoderTask`` (the profile's ``refiner_vae``) on the
        refiner's own inner datamodule, with the refiner's ``vae_config``, exported as a diffusers folder."""
        config = merged_config(self.plan.refiner_configs)
        args = ["--config", str(self.plan.refiner_vae), "--data", json.dumps(config["data"]["init_args"]["data"]),
                "--data.init_args.root", str(self.root), "--data.init_args.protocol", protocol,
                "--model.init_args.label_embedding", embedding, "--model.init_args.export", str(export)]
        vae_config = ((config["model"]["init_args"].get("net") or {}).get("init_args") or {}).get("vae_config")
        if vae_config is not None:
            args += ["--model.init_args.vae_config", json.dumps(vae_config)]
        return args
