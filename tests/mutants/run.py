"""Apply each mutant to a copy of the project and run its group's default-run tests: a mutant that leaves
them green survives. ``make mutants`` (or ``python -m tests.mutants.run [--group G] [--name N …]``) prints
one line per mutant, the score per group, and writes ``results/mutants.json``; it exits 1 if any survives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.mutants.catalogue import GROUP_TESTS, MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".git", ".venv", "results", ".cache", "__pycache__", "*.egg-info", ".pytest_cache")


def apply(mutant: Mutant, root: Path) -> str:
    """Write the mutant into ``root``; return the original text (to restore)."""
    path = root / mutant.path
    text = path.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.name}: its text occurs {text.count(mutant.old)} times in {mutant.path}")
    path.write_text(text.replace(mutant.old, mutant.new))
    return text


def run_tests(mutant: Mutant, root: Path, timeout: float) -> tuple[str, float]:
    """'killed', 'survived' or 'timeout' (counted as killed, reported apart), and the seconds taken."""
    tests = [t for t in GROUP_TESTS[mutant.group] if (root / t).exists()]
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 2–5: interrupted, internal error, usage, nothing collected
        raise SystemExit(f"mutant {mutant.name}: pytest exited {proc.returncode}\n{proc.stdout[-2000:]}")
    return ("killed" if proc.returncode == 1 else "survived"), time.perf_counter() - start


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root)}  # the copy's rsseg shadows the editable install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--group", action="append", choices=sorted(GROUP_TESTS), help="only these groups")
    parser.add_argument("--name", action="append", help="only these mutants")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "mutants.json")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS
              if (not args.group or m.group in args.group) and (not args.name or m.name in args.name)]
    if not chosen:
        parser.error("no mutant matches")
    results = []
    with tempfile.TemporaryDirectory(prefix="rsseg-mutants-") as tmp:
        copy = Path(tmp) / "project"
        shutil.copytree(ROOT, copy, ignore=SKIP)
        for i, mutant in enumerate(chosen, 1):
            original = apply(mutant, copy)
            try:
                outcome, seconds = run_tests(mutant, copy, args.timeout)
            finally:
                (copy / mutant.path).write_text(original)
            results.append({"name": mutant.name, "group": mutant.group, "outcome": outcome,
                            "seconds": round(seconds, 1)})
            print(f"[{i}/{len(chosen)}] {outcome:8s} {mutant.group:7s} {mutant.name} ({seconds:.0f} s)", flush=True)
    survived = [r for r in results if r["outcome"] == "survived"]
    total, dead = Counter(r["group"] for r in results), Counter(r["group"] for r in results if r not in survived)
    print("\nmutation score per group:")
    for group in sorted(total):
        print(f"  {group:8s} {dead[group]}/{total[group]} killed ({100 * dead[group] / total[group]:.0f} %)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"results": results, "score": {g: [dead[g], total[g]] for g in total}}, indent=1))
    for r in survived:
        print(f"SURVIVED: {r['name']}", file=sys.stderr)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
