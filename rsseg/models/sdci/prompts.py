"""SDCI's prompt tables (paper 002, §4.1 and Table 3): the text behind each dataset class.

A table is a YAML file a user can edit (``experiments/sdci/prompts/<dataset>.yaml``)::

    templates: remote_sensing          # the released code's 10 templates, or a list of "…{}…" strings
    background: {class: clutter, prompts: [other]}
    classes:
      impervious_surfaces: {ori: [impervious surfaces], gen: [ground, road, streets], set_of_gen: [...]}

Each setting lists a class's names; their embeddings are averaged (Table 3's multi-name Gen entries and
the "Set of Gen" candidates). The background class is the one SDCI does not segment: its prompts only
compete in the softmax, unless the background is predicted as a class (SegEarth-OV's counting).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

PROMPT_SETTINGS = ("ori", "gen", "set_of_gen")
BACKGROUND_MODES = ("ignore", "predict")

# template/image_template.txt of the released code: used by all its configs
REMOTE_SENSING_TEMPLATES = (
    "a satellite image of a {}.",
    "an aerial view of a {}.",
    "a satellite photo of a {}.",
    "a top-down view of a {}.",
    "a piece of land with a {}.",
    "a landscape dominated by a {}.",
    "an earth observation satellite image of a {}.",
    "a landscape dominated by {}.",
    "an area of {} as seen from above.",
    "land cover classified as {}.",
)
TEMPLATE_SETS = {"remote_sensing": REMOTE_SENSING_TEMPLATES}


@dataclass(frozen=True)
class PromptTable:
    """What SDCI segments: ``classes`` (dataset class indices, in output order) with their ``names``, the
    ``distractors`` that only compete in the softmax, the ``templates``, and the dataset's background class."""

    classes: tuple[int, ...]
    names: tuple[tuple[str, ...], ...]
    distractors: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...]
    background: int | None


def load_prompts(path: str | Path, setting: str, dataset_classes: Sequence[str],
                 background: str = "ignore") -> PromptTable:
    """The table in ``path`` for ``setting`` over the dataset's ``dataset_classes`` (rsseg's class names).

    ``background="ignore"``: the background class is neither segmented nor scored (SDCI's evaluation), its
    prompts are a distractor; ``"predict"``: it is a class like the others, its prompts its names.
    """
    if setting not in PROMPT_SETTINGS:
        raise ValueError(f"prompt setting must be one of {PROMPT_SETTINGS}, got {setting!r}")
    if background not in BACKGROUND_MODES:
        raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {background!r}")
    path = Path(path)
    try:
        table = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the prompt table ({error})") from error
    entries = table.get("classes") or {}
    unknown = sorted(set(entries) - set(dataset_classes))
    if unknown:
        raise ValueError(f"{path}: classes {unknown} are not classes of this dataset {list(dataset_classes)}")
    back = table.get("background") or {}
    back_class = back.get("class")
    if back_class is not None and back_class not in dataset_classes:
        raise ValueError(f"{path}: background class {back_class!r} is not one of {list(dataset_classes)}")
    back_prompts = tuple(back.get("prompts") or ())
    classes, names = [], []
    for index, name in enumerate(dataset_classes):
        if name == back_class:
            if background == "predict":
                if not back_prompts:
                    raise ValueError(f"{path}: predicting the background needs background.prompts")
                classes.append(index)
                names.append(back_prompts)
            continue
        prompts = (entries.get(name) or {}).get(setting)
        if not prompts:
            raise ValueError(f"{path}: class {name!r} has no {setting!r} prompts")
        classes.append(index)
        names.append(tuple(prompts))
    templates = table.get("templates", "remote_sensing")
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"{path}: unknown template set {templates!r}; use one of {sorted(TEMPLATE_SETS)} "
                             "or a list")
        templates = TEMPLATE_SETS[templates]
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"{path}: every template needs a {{}} where the class name goes")
    distractors = (back_prompts,) if background == "ignore" and back_prompts else ()
    return PromptTable(tuple(classes), tuple(names), distractors, tuple(templates),
                       None if back_class is None else list(dataset_classes).index(back_class))
