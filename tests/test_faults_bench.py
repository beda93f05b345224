"""Issue 18, bench faults: nothing lost, nothing run, nothing mislabelled.

The benches here are cheap: the real plan of Potsdam's smoke profile (four methods, unet refined by IDGBR),
with the data source, the reference row, each method's run, the refiner, the plots and the W&B summary
replaced by fakes, so what is tested is the bench's own bookkeeping (one test fits a tiny real Lightning
module, to prove the interrupt path through Lightning's own handling).
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from rsseg.bench import report, runner
from rsseg.bench.sources import DataSource, resolve_prepared_root
from rsseg.data.core.errors import DataError

METHODS = ["unet", "deeplabv3plus", "d2ls", "sdci"]  # the Potsdam smoke plan; unet is refined by idgbr
MAJORITY = {"method": "majority class", "mIoU": 0.1, "OA": 0.4, "params": 0}


def strict_json(path: Path):
    """``path`` parsed as strict JSON: a bare NaN/Infinity (Python's extension) fails the test."""

    def reject(constant):
        raise ValueError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=reject)


def metrics_row(method: str, config, **extra) -> dict:
    return {"method": method, "configs": [str(config)], "mIoU": 0.5, "mF1": 0.6, "OA": 0.7, "Kappa": 0.4,
            "params": 1000, "inference_img_per_s": 2.0, "seed": 42, "protocol": "unetformer", **extra}


class FakeRefiner:
    """RefinerStages without fitting: a row per refined method, its name appended to ``ran``."""

    ran: list[str] = []

    def __init__(self, plan, root, run_dir, tracking, *args, **kwargs):
        self.coarse_root = Path(run_dir)

    def run(self, method: str):
        self.ran.append(f"idgbr({method})")
        return metrics_row(f"idgbr({method})", "experiments/idgbr/potsdam.yaml", refines=method), None


class Bench:
    """A cheap bench (see the ``bench`` fixture): call it with a fake ``run_method``."""

    def __init__(self, out: Path, cache: Path, monkeypatch) -> None:
        self.out, self.cache, self.monkeypatch = out, cache, monkeypatch
        self.ran: list[str] = []  # the rows run, in order (the refiner's too)
        self.finished: dict[str, list[dict]] = {}  # the rows the plots and the W&B summary got

    def __call__(self, run_method) -> Path:
        def recorded(method, *args, **kwargs):
            self.ran.append(method)
            return run_method(method, *args, **kwargs)

        self.monkeypatch.setattr(runner, "run_method", recorded)
        return runner.run_bench("potsdam", profile="smoke", out=str(self.out), cache=str(self.cache))

    @property
    def run_dir(self) -> Path:
        [run] = list((self.out / "potsdam").iterdir())
        return run

    def plots(self, run_dir, rows, meta, **panel) -> list:
        self.finished["plots"] = list(rows)
        return []

    def summary(self, run_dir, rows, meta, manifest, plots, tracking) -> None:
        self.finished["summary"] = list(rows)


@pytest.fixture(autouse=True)
def signal_handlers():
    """Each test's SIGINT/SIGTERM handlers are restored after it, whatever it (or a broken bench) left."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def fresh_bench_process(monkeypatch):
    """Each test starts as a new ``rsseg bench`` process would (no RSSEG_BENCH_RUN_DIR) and leaves none set for
    the next test (setting it first makes monkeypatch restore its absence)."""
    monkeypatch.setenv(runner.RUN_DIR_ENV, "")
    monkeypatch.delenv(runner.RUN_DIR_ENV)


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """``bench(run_method)``: a Potsdam smoke bench in ``tmp_path/out`` whose methods run ``run_method`` (a fake
    with run_method's signature); every other costly step is faked. ``bench.ran`` lists the rows run."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text("{}")
    monkeypatch.setattr(runner, "resolve_prepared_root",
                        lambda *a, **k: DataSource(prepared=data, raw=None, synthetic=False))
    monkeypatch.setattr(runner, "reference_rows", lambda plan, root: [dict(MAJORITY)])
    monkeypatch.setattr(runner, "RefinerStages", FakeRefiner)
    monkeypatch.setattr(runner, "close_failed_run", lambda: None)
    bench = Bench(tmp_path / "out", tmp_path / "cache", monkeypatch)
    monkeypatch.setattr(runner, "write_plots", bench.plots)
    monkeypatch.setattr(runner, "log_summary_run", bench.summary)
    monkeypatch.setattr(FakeRefiner, "ran", bench.ran)
    return bench


def test_killed_bench_keeps_finished_rows(bench, monkeypatch):
    """Fault 1: a bench killed mid-run lost every finished row (results were written only at the end).
    Now after every row results.{json,csv,md} and the manifest are rewritten atomically, flagged incomplete
    with the rows still to run, until the final write sets complete."""
    replaced: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append(Path(dst).name), real_replace(src, dst))[1])
    seen_on_disk: dict[str, dict] = {}

    def run_method(method, config, plan, root, run_dir, *args, **kwargs):
        # what a `kill -9` now would leave behind
        seen_on_disk[method] = {"json": strict_json(run_dir / "results.json"),
                                "csv": [r["method"] for r in csv.DictReader(open(run_dir / "results.csv"))],
                                "md": (run_dir / "results.md").read_text(),
                                "manifest": strict_json(run_dir / "manifest.json")}
        return metrics_row(method, config), None

    run_dir = bench(run_method)
    before_d2ls = seen_on_disk["d2ls"]
    assert [r["method"] for r in before_d2ls["json"]["rows"]] == ["majority class", "unet", "idgbr(unet)",
                                                                  "deeplabv3plus"]
    assert before_d2ls["csv"] == ["majority class", "unet", "idgbr(unet)", "deeplabv3plus"]
    assert before_d2ls["json"]["meta"]["complete"] is False
    assert before_d2ls["json"]["meta"]["pending"] == ["d2ls", "sdci"]
    assert "Incomplete" in before_d2ls["md"] and "| deeplabv3plus |" in before_d2ls["md"]
    assert set(before_d2ls["manifest"]["methods"]) == {"unet", "idgbr(unet)", "deeplabv3plus"}
    first = seen_on_disk["unet"]["json"]  # written before the first method: the reference row, all pending
    assert [r["method"] for r in first["rows"]] == ["majority class"]
    assert first["meta"]["pending"] == ["unet", "idgbr(unet)", "deeplabv3plus", "d2ls", "sdci"]

    final = strict_json(run_dir / "results.json")
    assert final["meta"]["complete"] is True and final["meta"]["pending"] == []
    assert [r["method"] for r in final["rows"]] == ["majority class", "unet", "idgbr(unet)", *METHODS[1:]]
    assert "Incomplete" not in (run_dir / "results.md").read_text()
    assert {"results.json", "results.csv", "results.md"} <= set(replaced)  # each written through os.replace
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def lightning_like(fn):
    """What Lightning's ``_call_and_handle_interrupt`` does with a KeyboardInterrupt (2.x): ignore SIGINT from
    now on and ``sys.exit(1)``."""
    try:
        return fn()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.exit(1)


def wait_for_signal() -> None:
    """Give Python the chance to run the handler of a signal sent to this process."""
    for _ in range(200):
        time.sleep(0.01)
    pytest.fail("the signal was not turned into an exception")


class SentinelReached(Exception):
    """The test's own SIGTERM handler ran: the bench installed none (SIGTERM would otherwise kill pytest)."""


def run_interrupted(bench, run_method) -> None:
    """Run ``bench(run_method)``, which must stop with KeyboardInterrupt, under a SIGTERM handler of the test's
    own (SIGTERM would otherwise end pytest); afterwards SIGINT and SIGTERM must be the caller's handlers again."""
    def sentinel(*_):
        raise SentinelReached

    before_int = signal.getsignal(signal.SIGINT)
    before_term = signal.signal(signal.SIGTERM, sentinel)
    try:
        with pytest.raises(KeyboardInterrupt):
            bench(run_method)
        assert signal.getsignal(signal.SIGINT) is before_int  # not Lightning's SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is sentinel
    finally:
        signal.signal(signal.SIGTERM, before_term)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_stops_the_bench_with_an_interrupted_row(bench, signum):
    """Fault 2: Ctrl-C (or SIGTERM) during a method: Lightning turns it into sys.exit(1), which the bench
    recorded as "failed: LightningCLI rejected its configuration" before starting the next method. Now the
    row says interrupted (by which signal), the tables are written, no later method runs, KeyboardInterrupt
    propagates and the signal handlers are the caller's again."""
    def run_method(method, config, *args, **kwargs):
        if method == "deeplabv3plus":
            def training():
                os.kill(os.getpid(), signum)
                wait_for_signal()
            lightning_like(training)
        return metrics_row(method, config), None

    run_interrupted(bench, run_method)
    assert bench.ran == ["unet", "idgbr(unet)", "deeplabv3plus"]  # d2ls and sdci never started
    payload = strict_json(bench.run_dir / "results.json")
    assert payload["rows"][-1] == {"method": "deeplabv3plus", "interrupted": signum.name}
    assert not any("failed" in row for row in payload["rows"])
    meta = payload["meta"]
    assert meta["complete"] is False and meta["interrupted"] == signum.name and meta["pending"] == ["d2ls", "sdci"]
    table = (bench.run_dir / "results.md").read_text()
    assert "| deeplabv3plus (interrupted) † |" in table and "rejected its configuration" not in table
    assert "plots" not in bench.finished  # plots and the W&B summary only for a finished bench


def test_config_error_is_still_a_failure_and_the_bench_goes_on(bench):
    """Fault 2 (the other side): a genuine LightningCLI configuration error (jsonargparse's SystemExit(2), no
    interrupt requested) still gives the config-failure row, and the next methods run."""
    def run_method(method, config, *args, **kwargs):
        if method == "d2ls":
            sys.exit(2)
        return metrics_row(method, config), None

    with pytest.raises(runner.BenchFailed):
        bench(run_method)
    assert bench.ran == ["unet", "idgbr(unet)", *METHODS[1:]]
    rows = {r["method"]: r for r in strict_json(bench.run_dir / "results.json")["rows"]}
    assert "rejected its configuration" in rows["d2ls"]["failed"]


class KillAtStep:
    """Sends ``signum`` to this process at a training step, as Ctrl-C or `kill` would during a fit."""

    def __init__(self, signum, step: int = 2):
        import lightning

        class Callback(lightning.Callback):
            def on_train_batch_end(cb, trainer, *args):
                if trainer.global_step == step:
                    os.kill(os.getpid(), signum)

        self.callback = Callback()


def tiny_fit(signum) -> dict:
    """A real Lightning fit of a 3-parameter model, interrupted at step 2; the trainer's status if it returns."""
    import lightning
    import torch

    class Tiny(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 2)), batch_size=2)
    trainer = lightning.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False,
                                callbacks=[KillAtStep(signum).callback])
    trainer.fit(Tiny(), data)
    return {"status": str(trainer.state.status)}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_through_a_real_lightning_fit(bench, signum):
    """Fault 2 through Lightning itself: a signal during a real ``Trainer.fit`` (Lightning's graceful shutdown,
    SIGINT left ignored, sys.exit(1); for SIGTERM its own handler composed with the bench's) gives the
    interrupted row and stops the bench, and SIGINT is no longer ignored afterwards."""
    def run_method(method, config, *args, **kwargs):
        if method == "unet":
            tiny_fit(signum)
            pytest.fail("the fit was not interrupted")
        return metrics_row(method, config), None

    run_interrupted(bench, run_method)
    assert bench.ran == ["unet"]
    payload = strict_json(bench.run_dir / "results.json")
    assert payload["rows"][-1] == {"method": "unet", "interrupted": signum.name}
    assert payload["meta"]["pending"] == ["idgbr(unet)", *METHODS[1:]]


def test_guarded_rearms_sigint_after_lightning_ignored_it():
    """Fault 2: Lightning leaves SIGINT ignored after it handled a KeyboardInterrupt; the bench's handler is
    back after each run, so the next Ctrl-C is not lost."""
    with runner.Interrupts() as interrupts:
        row, _ = runner.guarded("m", lambda: lightning_like(lambda: os.kill(os.getpid(), signal.SIGINT)
                                                           or wait_for_signal()), interrupts=interrupts)
        assert row == {"method": "m", "interrupted": "SIGINT"}
        assert signal.getsignal(signal.SIGINT) == interrupts._handle


def test_bench_with_failed_methods_raises_bench_failed(bench):
    """Fault 3: a bench where methods fail exited 0. Now, after every table, plot and the W&B summary are
    written, run_bench raises BenchFailed naming the failed methods and the run folder (the CLI exits 1)."""
    def run_method(method, config, *args, **kwargs):
        if method == "d2ls":
            sys.exit(2)  # a config LightningCLI rejects
        if method == "sdci":
            raise RuntimeError("out of memory")
        return metrics_row(method, config), None

    with pytest.raises(runner.BenchFailed) as failure:
        bench(run_method)
    error = failure.value
    assert error.failed == ["d2ls", "sdci"] and error.run_dir == bench.run_dir
    assert str(error) == f"2 of 5 methods failed (d2ls, sdci); see {bench.run_dir / 'results.md'}"
    payload = strict_json(bench.run_dir / "results.json")
    assert payload["meta"]["complete"] is True and len(payload["rows"]) == 6
    assert [r["method"] for r in bench.finished["plots"]] == [r["method"] for r in payload["rows"]]
    assert "summary" in bench.finished


def test_benches_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """Fault 4: run folders were named to the second, so benches started in the same second died with
    FileExistsError. Now each gets a folder of its own (a -2, -3, … suffix claimed by an atomic mkdir),
    from separate processes (each with its own environment) and from concurrent threads alike."""

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 5, 1, 12, 0, 0)

    monkeypatch.setattr(runner, "datetime", Frozen)
    folders = []
    for _ in range(3):  # three `rsseg bench` processes: none inherits RSSEG_BENCH_RUN_DIR
        monkeypatch.delenv(runner.RUN_DIR_ENV, raising=False)
        folders.append(runner.shared_run_dir(tmp_path / "a"))
    assert [f.name for f in folders] == ["20240501-120000", "20240501-120000-2", "20240501-120000-3"]

    start, made, errors = threading.Barrier(8), [], []

    def claim():
        start.wait()
        try:
            made.append(runner.new_run_dir(tmp_path / "b"))
        except Exception as error:  # noqa: BLE001 — collected and asserted on
            errors.append(error)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(made)) == 8 and all(f.is_dir() for f in made)


def test_bad_data_root_is_a_data_error_and_leaves_no_run_folder(tmp_path, monkeypatch):
    """Fault 5: a nonexistent --data-root raised a bare FileNotFoundError, and an early error left an empty
    run folder. Now it is a DataError naming the path, and no error before the first row leaves a folder."""
    missing = tmp_path / "no-such-root"
    with pytest.raises(DataError, match=str(missing)):
        resolve_prepared_root("potsdam", str(missing), tmp_path / "cache", {"patch_size": 512})
    with pytest.raises(DataError, match="no-such-root.*does not exist"):
        runner.run_bench("refsegrs", data_root=str(missing), out=str(tmp_path / "out"), cache=str(tmp_path / "c"))
    assert not (tmp_path / "out").exists()

    root = tmp_path / "refsegrs"  # exists, but its files do not load: the reference rows fail
    root.mkdir()

    def unreadable(plan, root):
        raise DataError(f"{root}: no images")

    monkeypatch.setattr(runner, "reference_rows", unreadable)
    with pytest.raises(DataError, match="no images"):
        runner.run_bench("refsegrs", data_root=str(root), out=str(tmp_path / "out"), cache=str(tmp_path / "c"))
    assert not (tmp_path / "out" / "refsegrs").exists() or not any((tmp_path / "out" / "refsegrs").iterdir())
    assert runner.RUN_DIR_ENV not in os.environ


def test_results_json_has_no_bare_nan(bench, tmp_path):
    """Fault 6: results.json held bare NaN, which strict JSON parsers reject. Now NaN and ±inf are null in
    results.json and the manifest, while results.csv keeps "nan" and results.md "–" as before."""
    def run_method(method, config, *args, **kwargs):
        return metrics_row(method, config, mIoU=math.nan, Kappa=math.inf, gflops=-math.inf), None

    bench(run_method)
    payload = strict_json(bench.run_dir / "results.json")  # raises on NaN/Infinity
    strict_json(bench.run_dir / "manifest.json")
    unet = payload["rows"][1]
    assert unet["mIoU"] is None and unet["Kappa"] is None and unet["gflops"] is None
    assert [r["mIoU"] for r in csv.DictReader(open(bench.run_dir / "results.csv"))][1] == "nan"
    assert "| unet | – |" in (bench.run_dir / "results.md").read_text()

    run = tmp_path / "direct"
    run.mkdir()
    report.write_report(run, [{"method": "x", "mIoU": math.nan, "nested": {"a": [math.inf]}}],
                        {"dataset": "d", "profile": "smoke", "task": "semantic", "device": "cpu",
                         "extra": math.nan})
    direct = strict_json(run / "results.json")
    assert direct["rows"][0]["nested"] == {"a": [None]} and direct["meta"]["extra"] is None
