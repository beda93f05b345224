"""Read a pickle of plain Python containers without running code (RRSIS-D's ``refs(unc).p``).

A pickle can name any importable callable (``os.system``, ``builtins.eval``) and have the unpickler call
it; that is the only way one runs code, and every such name goes through ``Unpickler.find_class``
(GLOBAL, STACK_GLOBAL and the copyreg extension codes alike). ``load_plain_pickle`` refuses every name,
so only what the pickle opcodes build without a callable can come out: dict, list, tuple, set, frozenset,
str, bytes, bytearray, int, float, bool and None. Persistent ids are refused by the base class (no
``persistent_load``). The package never calls ``pickle.load`` (tests/test_faults_cli.py).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from rsseg.data.core.errors import DataError


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global, so no class is built and no function is called."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        raise DataError(
            f"{self.path}: refused to unpickle the global {module}.{name}: this file must hold plain "
            "containers only (dict, list, str, int, float, bool, None); a pickle naming a class or a "
            "function could run code when loaded"
        )


def load_plain_pickle(path: str | Path) -> Any:
    """The object pickled in ``path``, built from plain containers only; DataError names the file.

    Refused globals, truncated or corrupt files and missing files all become DataErrors.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            return _PlainUnpickler(file, path).load()
    except DataError:
        raise
    except FileNotFoundError as error:
        raise DataError(f"{path}: file not found") from error
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, OSError) as error:
        raise DataError(f"{path}: not a readable pickle ({type(error).__name__}: {error})") from error
