"""Looking up a dataset's split protocol by the name the user gave (``--protocol``, ``protocol=``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from rsseg.data.core.errors import DataError

P = TypeVar("P")


class UnknownProtocolError(DataError, ValueError):
    """An unknown protocol name: a DataError (the user's argument, the message lists the known ones);
    also a ValueError, which is what the lookups raised before, so existing callers keep working."""


def lookup_protocol(protocols: Mapping[str, P], name: object, display_name: str) -> P:
    """``protocols[name]``, or an UnknownProtocolError listing the known protocol names."""
    if not isinstance(name, str) or name not in protocols:
        raise UnknownProtocolError(
            f"unknown {display_name} protocol {name!r}; choose one of {', '.join(protocols)}"
        )
    return protocols[name]
