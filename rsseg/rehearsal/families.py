"""The families of pretrained models, one module each: ``entries()`` lists its hub repositories and ``checks()``
its rehearsal checks (name → function returning a record)."""

from __future__ import annotations

import importlib

FAMILY_MODULES = ("d2ls_baselines", "referring", "sdci", "idgbr")


def modules():
    return [importlib.import_module(f"rsseg.rehearsal.{name}") for name in FAMILY_MODULES]

