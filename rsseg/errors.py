"""Errors as one line: what the command line prints and the bench's report records."""

from __future__ import annotations

import argparse


def original_message(error: BaseException) -> str:
    """The message of ``error`` on one line. An error raised in a DataLoader worker reaches the main process
    re-created around the worker's whole traceback; the original message is its last entry."""
    text = str(error).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        name = type(error).__name__
        cut = max(text.rfind(f".{name}: "), text.rfind(f"\n{name}: "))
        if cut >= 0:
            text = text[text.index(": ", cut) + 2:].strip()
    lines = [line.strip() for line in text.splitlines()]
    if isinstance(error, argparse.ArgumentError):  # a configuration LightningCLI (jsonargparse) rejected
        lines = [line.removeprefix("- ") for line in lines if not line.startswith(CONFIG_ERROR_NOISE)]
    return " ".join(line for line in lines if line) or type(error).__name__


# jsonargparse's lines around the reason a ``class_path`` value was rejected: the subtype list, the ``None``
# alternative every optional model/data argument has, and the value echoed back whole.
CONFIG_ERROR_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:",
                      "- Expected a <class 'NoneType'>", "Given value type:", "Given value:")
