"""Name → class registries for methods, architectures and datasets (timm-style decorators).

The core never imports a concrete plugin: `load_plugins()` imports the built-in plugin packages by name
(``mtlprune.methods``, ``mtlprune.datasets``, ``mtlprune.engine.models``), then any module named by the
``mtlprune.methods`` entry-point group or by ``--plugin``. Registration is a side effect of the imports.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUP = "mtlprune.methods"
BUILTIN_PLUGIN_PACKAGES = ("mtlprune.engine.models", "mtlprune.datasets.loaders", "mtlprune.methods")


class UnknownNameError(KeyError):
    """A name that is not in a registry; the message lists close matches and every allowed name."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def suggest(name: str, allowed: list[str]) -> str:
    """'did you mean' text for a misspelt name, plus the full list of allowed names."""
    close = difflib.get_close_matches(name, allowed, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}allowed: {', '.join(repr(a) for a in sorted(allowed))}"


class Registry(Generic[T]):
    """A named collection of classes; `register` is a decorator, `get` fails with suggestions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(
                    f"{self.kind} {name!r} is registered twice ({self._items[name]!r} and {obj!r})"
                )
            self._items[name] = obj
            obj.registry_name = name  # type: ignore[attr-defined]
            return obj

        return decorate

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; {suggest(name, self.names())}") from None

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        load_plugins()
        yield from sorted(self._items.items())

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._items


METHODS: Registry[Any] = Registry("method")
ARCHS: Registry[Any] = Registry("architecture")
DATASETS: Registry[Any] = Registry("dataset")

_loaded: set[str] = set()


def load_plugins(extra: tuple[str, ...] | list[str] = ()) -> None:
    """Import built-in plugin packages, entry-point plugins and `extra` modules (each once)."""
    wanted = list(BUILTIN_PLUGIN_PACKAGES)
    if "<entry-points>" not in _loaded:
        _loaded.add("<entry-points>")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as exc:  # a broken third-party plugin must say which one
                raise ImportError(
                    f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {exc}"
                ) from exc
    # A file path is kept resolved, so worker processes and Slurm tasks import the same file from anywhere.
    wanted.extend(str(Path(m).expanduser().resolve()) if m.endswith(".py") else m for m in extra)
    for module in wanted:
        if module in _loaded:
            continue
        _loaded.add(module)
        try:
            if module.endswith(".py"):
                _import_file(module)
            else:
                importlib.import_module(module)
        except ImportError as exc:
            _loaded.discard(module)
            raise ImportError(f"cannot import plugin module {module!r}: {exc}") from exc


def _import_file(path_text: str) -> None:
    """Import a plugin given as a file path (``--plugin my_method.py``) under a name of its own.

    The module is named ``mtlprune_plugin_<stem>_<hash of the resolved path>`` so two files with the same
    name do not collide, and it is put in ``sys.modules`` so pickling (worker processes) can find its classes.
    """
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ImportError(f"no such file: {path}")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    name = f"mtlprune_plugin_{path.stem}_{digest}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a syntax error or a failing import in the file: name the file
        del sys.modules[name]
        raise ImportError(f"{path}: {type(exc).__name__}: {exc}") from exc
