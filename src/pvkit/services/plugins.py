"""Services and handlers of the user's own, named `package.module:attribute`.

The module is imported from the current directory or PYTHONPATH, as `python -m` would find
it. Every way this can fail (no colon, no such module, an error while importing, no such
attribute, not a Service subclass, a class that needs arguments) is a `PluginError` of one
sentence, so the command line can print it as it is.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable

from pvkit.hypercall.call import Call
from pvkit.services.base import Service


class PluginError(ValueError):
    """A `module:attribute` the host named cannot be used; the message says why."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_object(spec: str, what: str = "object") -> object:
    """The attribute `spec` ("package.module:name", name may be dotted) names."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(f"{spec!r} does not name a {what}: write package.module:{what}")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)  # as `python -m` puts it first
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise PluginError(
                f"cannot import {module_name!r}: no such module in the current directory "
                "or on PYTHONPATH"
            ) from None
        raise PluginError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    except Exception as exc:  # the user's module raised (SyntaxError included)
        raise PluginError(f"importing {module_name!r} failed: {_one_line(exc)}") from None
    value: object = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise PluginError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return value


def load_service_class(spec: str) -> type[Service]:
    value = load_object(spec, "Class")
    if inspect.isclass(value) and issubclass(value, Service):
        return value
    if inspect.isclass(value):
        raise PluginError(f"{spec!r} is a class but not a subclass of pvkit.Service")
    raise PluginError(f"{spec!r} is a {type(value).__name__}, not a subclass of pvkit.Service")


def load_service(spec: str) -> Service:
    """A new instance of the Service subclass `spec` names (made with no arguments)."""
    cls = load_service_class(spec)
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise PluginError(f"{spec!r} is abstract: it does not define {missing}")
    try:
        service = cls()
    except Exception as exc:
        raise PluginError(f"{spec!r} cannot be made with no arguments: {_one_line(exc)}") from None
    name = getattr(service, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f'{spec!r} has no name: give the class a `name = "..."` attribute')
    return service


def load_handler(spec: str) -> Callable[[Call], None]:
    """The callable `spec` names, for a FORWARD policy rule (it gets the Call)."""
    value = load_object(spec, "function")
    if not callable(value):
        raise PluginError(f"{spec!r} is {type(value).__name__}, not a function")
    handler: Callable[[Call], None] = value
    return handler


def spec_of(target: object) -> str:
    """The `package.module:name` of a class or function (the inverse of load_object): how a
    snapshot records which services and handlers of the user's own a VM had."""
    return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', '?')}"
