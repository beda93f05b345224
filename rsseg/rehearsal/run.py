"""Run rehearsal checks, each in a fresh process against the rehearsal cache with the network off.

``python -m rsseg.rehearsal.run --cache DIR [NAME …]`` runs the named checks (default: all) one process each
(``HF_HOME=DIR``, ``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``), so every record's peak memory is that
check's alone, and prints one JSON record per check: its measurements (load time, parameters, step times)
plus ``wall_s`` and ``peak_rss_mib``; a failed check's record has ``error``. With ``RSSEG_REHEARSAL_RECORDS``
set, every record is also appended to that JSON-lines file (``make rehearse`` keeps them there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

from rsseg.rehearsal.hub import hub_folder

RECORDS_ENV = "RSSEG_REHEARSAL_RECORDS"  # a JSON-lines file every run_check appends its record to


def offline_environment(cache: str | Path) -> dict[str, str]:
    """This process's environment pointed at the rehearsal cache, with every hub download off."""
    return {**os.environ, "HF_HOME": str(Path(cache).resolve()), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}


def run_check(name: str, cache: str | Path, timeout: float = 3600) -> dict:
    """Check ``name`` in a child process; its record (with ``error`` when it failed)."""
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "rsseg.rehearsal.run", "--child", name], capture_output=True,
                           text=True, env=offline_environment(cache), timeout=timeout)
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    record = json.loads(lines[-1]) if lines else {"check": name}
    if child.returncode != 0 and "error" not in record:
        record["error"] = f"exit {child.returncode}: {child.stderr[-3000:]}"
    record["wall_s"] = round(time.perf_counter() - started, 1)
    if os.environ.get(RECORDS_ENV):  # make rehearse keeps every record the heavy tests make
        with open(os.environ[RECORDS_ENV], "a") as records:
            records.write(json.dumps(record) + "\n")
    return record


def _child(name: str) -> int:
    """Run one check here (the parent set the environment) and print its record."""
    from rsseg.rehearsal.registry import checks

    if os.environ.get("HF_HUB_OFFLINE") != "1" or not hub_folder(os.environ["HF_HOME"]).is_dir():
        print(json.dumps({"check": name, "error": "not run offline against a rehearsal cache"}))
        return 2
    record: dict = {"check": name}
    try:
        record.update(checks()[name]())
    except Exception as error:  # noqa: BLE001 — the record says what failed
        record["error"] = f"{type(error).__name__}: {error}"
        record["traceback"] = traceback.format_exc()[-4000:]
    record["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(record), flush=True)
    return 0 if "error" not in record else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--cache", default=".cache/rehearsal")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="also write the records to this JSON file")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.names[0])
    from rsseg.rehearsal.cache import require_all_extras
    from rsseg.rehearsal.registry import checks

    require_all_extras()
    names = args.names or sorted(checks())
    records = []
    for name in names:
        record = run_check(name, args.cache)
        print(json.dumps(record), flush=True)
        records.append(record)
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=1) + "\n")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
