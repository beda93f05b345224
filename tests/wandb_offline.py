"""Read an offline W&B run back from its files (``offline-run-*/run-*.wandb``), never mocking the client.

The ``.wandb`` file is a LevelDB-style log (7-byte W&B header, 32 KiB blocks, records split into
FULL/FIRST/MIDDLE/LAST chunks) of ``wandb_internal_pb2.Record`` protobufs; this reads the run's
config, group, tags, name, logged history rows, summary and files.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B run file")
    pos, records, partial = HEADER, [], b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            records.append(chunk)
        elif kind == FIRST:
            partial = chunk
        elif kind == MIDDLE:
            partial += chunk
        elif kind == LAST:
            records.append(partial + chunk)
    return records


def _set(tree: dict, keys: list[str], value) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


@dataclass
class OfflineRun:
    folder: Path
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None

    def logged(self, key: str) -> list:
        """Every value logged under ``key`` (history rows), in order."""
        return [row[key] for row in self.history if key in row]

    def table(self, key: str) -> dict:
        """The last W&B Table logged under ``key``, read from its media file: ``{"columns", "data"}``."""
        [*_, entry] = self.logged(key)
        return json.loads((self.folder / "files" / entry["path"]).read_text())


def read_offline_run(folder: str | Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(folder)
    [path] = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for raw in _records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.name, run.group, run.job_type, run.tags = r.display_name, r.run_group, r.job_type, list(r.tags)
            for item in r.config.update:
                run.config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                _set(run.config, list(item.nested_key) or [item.key], json.loads(item.value_json))
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                keys = list(item.nested_key) or [item.key]
                _set(row, [keys[0], *keys[1:]] if len(keys) > 1 else keys, json.loads(item.value_json))
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, list(item.nested_key) or [item.key], json.loads(item.value_json))
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(root: str | Path) -> list[OfflineRun]:
    """Every offline run under ``root`` (any depth), oldest first."""
    return [read_offline_run(p) for p in sorted(Path(root).rglob("offline-run-*")) if p.is_dir()]
