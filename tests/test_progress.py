"""Progress: log lines where no terminal is attached, a bar title without "Epoch 11/-2" in step-budgeted runs."""

import io
import logging

import pytest
from lightning import Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.demos.boring_classes import BoringModel

from rsseg.progress import EpochBar, ProgressLines, _epoch_title, progress_callback


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_files_and_pipes_get_log_lines_terminals_a_bar():
    assert isinstance(progress_callback(io.StringIO()), ProgressLines)
    assert not isinstance(progress_callback(_Terminal()), ProgressLines)


@pytest.mark.parametrize("max_epochs, max_steps, expected", [
    (40, -1, "Epoch 3/39"), (-1, 200, "Epoch 3 · step 17/200"), (None, -1, "Epoch 3 · step 17"),
])
def test_epoch_titles(max_epochs, max_steps, expected):
    trainer = type("T", (), {"max_epochs": max_epochs, "max_steps": max_steps, "global_step": 17})()
    assert _epoch_title(trainer, 3) == expected


def test_epoch_bar_titles_a_step_budgeted_run_without_a_negative_epoch_count():
    bar = EpochBar()
    bar._trainer = Trainer(max_epochs=-1, max_steps=50, logger=False, enable_checkpointing=False, callbacks=[bar])
    assert bar._get_train_description(2).strip() == "Epoch 2 · step 0/50"


def test_fit_and_test_write_progress_lines_to_the_log(caplog, tmp_path):
    lines = ProgressLines(interval=0.0)  # every batch, so the test sees the in-between lines
    trainer = Trainer(max_epochs=-1, max_steps=6, limit_val_batches=2, limit_test_batches=3, logger=False,
                      enable_checkpointing=False, enable_model_summary=False, callbacks=[lines],
                      default_root_dir=tmp_path, num_sanity_val_steps=0, val_check_interval=4)
    with caplog.at_level(logging.INFO, logger="rsseg.progress"):
        trainer.fit(BoringModel())
        trainer.test(BoringModel(), verbose=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "rsseg.progress"]
    assert "Epoch 0 · step 0/6: started" in messages
    assert any(m.startswith("Epoch 0 · step 3/6: batch 3/") for m in messages)
    assert any(m.startswith("validation: batch 2/2") for m in messages)
    assert "test: started" in messages and any(m.startswith("test: batch 3/3") for m in messages)
    assert any(m.startswith("test: done in") for m in messages)
    assert not any("-2" in m for m in messages)


def test_the_command_line_adds_progress_unless_the_config_turns_it_off_or_has_its_own():
    from rsseg.lightning_cli import RssegCLI

    cli = RssegCLI.__new__(RssegCLI)
    cli.trainer_defaults, cli.save_config_callback, cli.subcommand = {}, None, "fit"
    cli.trainer_class = Trainer
    built = cli._instantiate_trainer({"callbacks": [], "logger": False}, [])
    assert sum(isinstance(c, ProgressLines) for c in built.callbacks) == 1  # pytest's stdout is no terminal
    off = cli._instantiate_trainer({"callbacks": [], "logger": False, "enable_progress_bar": False}, [])
    assert off.progress_bar_callback is None
    own = TQDMProgressBar()
    mine = cli._instantiate_trainer({"callbacks": [own], "logger": False}, [])
    assert mine.progress_bar_callback is own
