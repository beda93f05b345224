"""Where a bench's time goes: wall and CPU seconds of every stage, announced with the previous run's time.

A stage is a named span (``data``, ``unet: fit``, ``unet: test``, ``idgbr(unet): coarse maps``, ``plots``, …);
:func:`stage` measures it on the bench's :class:`StageClock` (nothing outside a bench), and a name used again
adds to the same row. CPU time is the process's and its finished children's (data-loader workers), user +
system. The clock's rows go to ``results.json`` (``meta["stages"]``) and ``results.md``, and are printed at the
end; the next bench of the same dataset and profile reads them back to say how long each stage took last time.
"""

from __future__ import annotations

import contextvars
import json
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_current: contextvars.ContextVar[StageClock | None] = contextvars.ContextVar("rsseg_bench_clock", default=None)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``."""
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


class StageClock:
    """The stages of one bench run, in the order they started; ``previous`` maps a stage to its wall seconds in
    the last comparable run (the estimate announced when it starts)."""

    def __init__(self, previous: dict[str, float] | None = None) -> None:
        self.previous = previous or {}
        self.rows: list[dict] = []
        self.started = time.perf_counter()
        self.started_cpu = cpu_seconds()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        last = self.previous.get(name)
        print(f"--> {name}: started" + (f" (last run: {duration(last)})" if last is not None else ""), flush=True)
        wall, cpu, status = time.perf_counter(), cpu_seconds(), "done"
        try:
            yield
        except BaseException:
            status = "failed"
            raise
        finally:
            self._add(name, time.perf_counter() - wall, cpu_seconds() - cpu, status)

    def _add(self, name: str, wall: float, cpu: float, status: str) -> None:
        row = next((r for r in self.rows if r["stage"] == name), None)
        if row is None:
            self.rows.append({"stage": name, "wall_s": 0.0, "cpu_s": 0.0, "status": status})
            row = self.rows[-1]
        row["wall_s"] = round(row["wall_s"] + wall, 2)
        row["cpu_s"] = round(row["cpu_s"] + cpu, 2)
        row["status"] = "failed" if "failed" in (row["status"], status) else status

    def summary(self) -> dict:
        """``meta["stages"]``: the rows, and the run's total wall and CPU seconds so far."""
        return {"rows": [dict(r) for r in self.rows], "wall_s": round(time.perf_counter() - self.started, 2),
                "cpu_s": round(cpu_seconds() - self.started_cpu, 2)}

    @contextmanager
    def running(self) -> Iterator[StageClock]:
        """Make this the clock :func:`stage` measures on, for the block."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Measure the block as stage ``name`` of the running bench (nothing when no bench is running)."""
    clock = _current.get()
    if clock is None:
        yield
        return
    with clock.stage(name):
        yield


def stage_lines(stages: dict) -> list[str]:
    """``results.md``'s (and the final printout's) table: each stage's wall, share of the total, and CPU."""
    total = stages["wall_s"] or 1e-9
    lines = ["## Where the time went", "", "| stage | wall | share | CPU |", "|---|---|---|---|"]
    for row in stages["rows"]:
        flag = "" if row["status"] == "done" else f" ({row['status']})"
        lines.append(f"| {row['stage']}{flag} | {duration(row['wall_s'])} | {100 * row['wall_s'] / total:.0f} % | "
                     f"{duration(row['cpu_s'])} |")
    covered = sum(r["wall_s"] for r in stages["rows"])
    lines += [f"| **total** | **{duration(stages['wall_s'])}** | 100 % | {duration(stages['cpu_s'])} |", "",
              f"Stages cover {100 * covered / total:.1f} % of the wall time; CPU time is user + system of the bench "
              "process and its finished children (data-loader workers), so it can exceed the wall time on "
              "several cores.", ""]
    return lines


def previous_stage_times(parent: Path, profile: str, exclude: Path | None = None) -> dict[str, float]:
    """Wall seconds per stage of the newest complete run of the same profile under ``parent`` (the dataset's
    results folder), for the estimates; empty when there is none."""
    runs = sorted((p for p in Path(parent).glob("*/results.json") if p.parent != exclude), reverse=True)
    for path in runs:
        try:
            meta = json.loads(path.read_text()).get("meta") or {}
        except (OSError, ValueError):
            continue
        if meta.get("profile") == profile and meta.get("complete") and meta.get("stages"):
            return {row["stage"]: row["wall_s"] for row in meta["stages"]["rows"] if row.get("status") == "done"}
    return {}
