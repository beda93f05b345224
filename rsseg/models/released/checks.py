"""Strict loading of converted weights, with errors that name the file and the keys that do not fit."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from torch import Tensor, nn


def few(names: Iterable[str]) -> str:
    """Up to five names, sorted, and how many more there are."""
    names = sorted(names)
    return ", ".join(names[:5]) + (f" (and {len(names) - 5} more)" if len(names) > 5 else "")


def check_state(module: nn.Module, state: Mapping[str, Tensor], source: object, optional: Collection[str] = ()) -> None:
    """``ValueError`` naming ``source`` and every kind of misfit (missing, unexpected, mis-shaped keys) when
    ``state`` does not fit ``module``; keys in ``optional`` may be absent."""
    expected = module.state_dict()
    missing = expected.keys() - state.keys() - set(optional)
    unexpected = state.keys() - expected.keys()
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
             for k in state.keys() & expected.keys() if state[k].shape != expected[k].shape]
    problems = [f"{what} {few(names)}" for what, names in (
        ("missing parameters for", missing), ("unexpected parameters", unexpected),
        ("shape mismatch (checkpoint vs model):", wrong)) if names]
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))


def load_strictly(module: nn.Module, state: Mapping[str, Tensor], source: object,
                  optional: Collection[str] = ()) -> nn.Module:
    """Load ``state`` into ``module`` after :func:`check_state`: all of it or nothing."""
    check_state(module, state, source, optional)
    module.load_state_dict(dict(state), strict=not optional)
    return module
