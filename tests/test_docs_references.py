"""The project stands on its own: nothing points at notes outside the repository, and every ``docs/…`` file the
code, the configs and the README cite exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = [*REPO.glob("rsseg/**/*.py"), *REPO.glob("tests/**/*.py"), *REPO.glob("benchmarks/*.py"),
           *REPO.glob("experiments/**/*.yaml"), *REPO.glob("docs/*.md"), REPO / "README.md"]


def test_nothing_points_outside_the_repository():
    outside = re.compile(r"DESIGN\.md|\.\./shared|shared/(?:reference|papers)|\.\./papers|\.\./reference")
    hits = [f"{path.relative_to(REPO)}:{n}" for path in SOURCES if path != Path(__file__)
            for n, line in enumerate(path.read_text().splitlines(), 1) if outside.search(line)]
    assert hits == []


def test_cited_docs_exist():
    cited = {m for path in SOURCES for m in re.findall(r"docs/([\w.-]+\.md)", path.read_text())}
    assert cited and sorted(name for name in cited if not (REPO / "docs" / name).is_file()) == []
