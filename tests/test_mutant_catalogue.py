"""The mutant list stays in step with the code: every mutant still applies, once, and still parses."""

import ast
from pathlib import Path

import pytest

from tests.mutants.catalogue import GROUP_TESTS, MUTANTS

ROOT = Path(__file__).resolve().parents[1]


def test_at_least_forty_uniquely_named_mutants_over_every_group():
    assert len(MUTANTS) >= 40
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    assert {m.group for m in MUTANTS} == set(GROUP_TESTS)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_once_and_the_mutated_file_parses(mutant):
    text = (ROOT / mutant.path).read_text()
    count = text.count(mutant.old)
    assert count == 1, f"{mutant.name}: {mutant.old!r} occurs {count}× in {mutant.path}"
    assert mutant.new != mutant.old
    ast.parse(text.replace(mutant.old, mutant.new))


def test_every_group_names_existing_default_run_test_files():
    for group, files in GROUP_TESTS.items():
        missing = [f for f in files if not (ROOT / f).exists()]
        assert not missing, f"{group}: {missing}"
