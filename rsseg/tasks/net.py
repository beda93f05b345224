"""A task's network as a dependency: ``net``, a partially configured network class (issue 19).

Every task takes its network as ``net``, typed ``Callable[[int], D2LS]`` (or ``Callable[[], DANet]`` where the
network needs nothing from the data). jsonargparse, under LightningCLI, reads such a type as "a class path of
a subclass of D2LS whose first parameter (the number of classes) is left open": the config names the class
and its ``init_args``, the CLI hands the task a ``functools.partial`` of it, and the task calls
``net(num_classes)``, the number of classes the CLI links from the datamodule at instantiation. So:

* a network's switches are declared once, in its constructor: they appear in ``--print_config`` under
  ``model.init_args.net.init_args`` and take ``--model.init_args.net.init_args.<switch>`` on the command line;
* LightningCLI's ``load_from_checkpoint_support`` records the parsed config (with ``net``'s ``class_path`` and
  every ``init_args``) as the hyper-parameters, so ``Task.load_from_checkpoint(path)`` rebuilds the network
  from the checkpoint alone;
* in Python, ``net`` is a class (its defaults), a ``functools.partial`` of one, or the config form
  ``{"class_path": ..., "init_args": {...}}``; :func:`network_spec` stores that config form in the
  hyper-parameters whatever was given (never a pickled callable), and :func:`network_factory` turns it back.

Alternatives considered: linking ``data.num_classes`` to ``model.init_args.net.init_args.num_classes`` would
need the link in the CLI and break the tasks' use outside it; a ``net`` instance built by jsonargparse before
the task cannot receive the number of classes at all. The callable is what Lightning's ``OptimizerCallable``
does for optimisers.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

NetFactory = Callable[..., nn.Module]


def _class_of(net: Any) -> tuple[type, dict[str, Any]]:
    """The network class of a class or (nested) ``functools.partial`` of one, and the keywords bound so far."""
    keywords: dict[str, Any] = {}
    while isinstance(net, functools.partial):
        keywords = {**net.keywords, **keywords}
        if isinstance(net.func, type):
            if net.args:
                raise TypeError(f"net: give the arguments of {net.func.__name__} as keywords, not positionally")
            net = net.func
        else:  # jsonargparse's partial(call_without_instantiate_context, instantiator, cls, **init_args)
            classes = [a for a in net.args if isinstance(a, type)]
            if not classes:
                break
            net = classes[-1]
    if not isinstance(net, type) or not issubclass(net, nn.Module):
        raise TypeError(f"net must be a network class, a functools.partial of one or {{'class_path': ..., "
                        f"'init_args': ...}}; got {net!r}")
    return net, keywords


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def network_spec(net: Any, open_arguments: int) -> dict[str, Any]:
    """``net`` in the config form ``{"class_path", "init_args"}``, every argument (defaults included) except
    the first ``open_arguments``, which the task fills in. A config-form mapping is returned as it is."""
    if isinstance(net, Mapping):
        return {"class_path": net["class_path"], "init_args": dict(net.get("init_args") or {})}
    cls, keywords = _class_of(net)
    parameters = list(inspect.signature(cls).parameters.values())[open_arguments:]
    init_args = {p.name: p.default for p in parameters
                 if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return {"class_path": class_path(cls), "init_args": {**init_args, **keywords}}


def _import_class(path: str, expected: type) -> type:
    """The class at ``path``, a subclass of ``expected``. Only already imported modules are read (as Lightning
    does for a checkpoint's ``_class_path``): a checkpoint cannot make rsseg import new code."""
    module_name, _, name = path.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None and module_name.startswith("rsseg."):
        module = importlib.import_module(module_name)  # rsseg's own networks (e.g. lazily imported SDCI)
    cls = getattr(module, name, None) if module is not None else None
    if not isinstance(cls, type) or not issubclass(cls, expected):
        raise TypeError(f"net: {path!r} is not an imported subclass of {class_path(expected)}")
    return cls


def network_factory(net: Any, expected: type = nn.Module) -> NetFactory:
    """A callable building the network from a class, a partial or the config form (see :func:`network_spec`)."""
    if isinstance(net, Mapping):
        cls = _import_class(net["class_path"], expected)
        return functools.partial(cls, **dict(net.get("init_args") or {}))
    cls, _ = _class_of(net)
    if not issubclass(cls, expected):
        raise TypeError(f"net: {class_path(cls)} is not a subclass of {class_path(expected)}")
    return net
