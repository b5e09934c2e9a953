"""Imports modules from a built Lambda artifact only; run by :mod:`avatar_local.deploy_checks.build_check` in a
fresh interpreter.

``python -I -S build_probe.py request.json``: isolated (no PYTHON* variables, no script directory, no user site) and
without site-packages, so ``sys.path`` is the standard library plus the directories the request names (a function's
build directory, then its layers' ``python/`` directories, in Lambda's order). Standard library only: nothing else
is importable here until the request's paths are.

The artifact targets another platform and Python (arm64, CPython 3.13) than the one running this, so three import
hooks stand between the build and this interpreter, and each records what it did:

* a compiled extension module found in the build (``name.cpython-313-aarch64-linux-gnu.so``, ``name.abi3.so``, ...)
  cannot load here, so the same module is loaded from ``host_paths`` (the development virtualenv) instead: the
  build provides the module, the host only stands in for its machine code;
* a top-level module in ``runtime_provided`` that the build lacks (boto3: the Lambda runtime ships it) comes from
  ``host_paths`` too;
* a module in ``removed_stdlib`` (gone from the standard library by the target Python) fails to import, as it would
  on Lambda, even though this older interpreter still has it.

Any other module must come from the build or the standard library; the result lists every module that did not.
The result is JSON, written to the request's ``result`` path (stdout is left to whatever the imports print).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import json
import os
import pkgutil
import re
import sys
import traceback
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


def _inside(path: str, roots: Sequence[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + os.sep) for root in roots)


def _extension_files(directory: str, leaf: str) -> list[str]:
    """Extension-module files for ``leaf`` in ``directory``, whatever platform they were built for."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    pattern = re.compile(rf"{re.escape(leaf)}(\.[^.]+)?\.so")
    return sorted(os.path.join(directory, name) for name in names if pattern.fullmatch(name))


def _is_package_dir(directory: str, leaf: str) -> bool:
    package = os.path.join(directory, leaf)
    suffixes = [".py", ".pyc", *importlib.machinery.EXTENSION_SUFFIXES]
    return os.path.isdir(package) and any(os.path.isfile(os.path.join(package, "__init__" + s)) for s in suffixes)


class RemovedStdlibBlocker(importlib.abc.MetaPathFinder):
    """Standard-library modules the target Python no longer has fail to import here too."""

    def __init__(self, removed: Sequence[str]) -> None:
        self.removed = frozenset(removed)
        self.blocked: list[str] = []

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> None:
        if fullname in self.removed:
            self.blocked.append(fullname)
            raise ModuleNotFoundError(f"No module named {fullname!r} (not in the target Python)", name=fullname)
        return None


class ExtensionStandIn(importlib.abc.MetaPathFinder):
    """A compiled module the build provides is loaded from the host's copy of the same module."""

    def __init__(self, build_paths: Sequence[str], build_roots: Sequence[str], host_paths: Sequence[str]) -> None:
        self.build_paths = list(build_paths)
        self.build_roots = list(build_roots)
        self.host_paths = list(host_paths)
        self.substituted: list[dict[str, Any]] = []
        self.unavailable: list[dict[str, Any]] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        leaf = fullname.rpartition(".")[2]
        directories = self.build_paths if path is None else [d for d in path if _inside(d, self.build_roots)]
        for directory in directories:
            # The order FileFinder looks in, per directory: a package, then an extension module, then source.
            if _is_package_dir(directory, leaf):
                return None
            found = _extension_files(directory, leaf)
            if found:
                return self._stand_in(fullname, found)
            if os.path.isfile(os.path.join(directory, leaf + ".py")):
                return None
        return None

    def _stand_in(self, fullname: str, build_files: list[str]) -> ModuleSpec:
        parents = fullname.split(".")[:-1]
        host_dirs = [os.path.join(root, *parents) for root in self.host_paths]
        spec = importlib.machinery.PathFinder.find_spec(fullname, host_dirs)
        if spec is None or not isinstance(spec.loader, importlib.machinery.ExtensionFileLoader) or not spec.origin:
            self.unavailable.append({"module": fullname, "build_files": build_files})
            raise ImportError(f"{fullname} is compiled in the build and the host has no compiled copy to stand in")
        self.substituted.append({"module": fullname, "build_files": build_files, "host_file": spec.origin})
        return spec


class RuntimeProvided(importlib.abc.MetaPathFinder):
    """Last resort for the top-level packages the Lambda runtime itself ships (boto3): the host's copy."""

    def __init__(self, names: Sequence[str], host_paths: Sequence[str]) -> None:
        self.names = frozenset(names)
        self.host_paths = list(host_paths)
        self.provided: list[str] = []
        self.roots: list[str] = []

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if path is not None or fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, self.host_paths)
        if spec is not None and spec.origin:
            self.provided.append(fullname)
            # A package's directory, or a single module's file: what counts as the runtime's.
            self.roots.append(os.path.dirname(spec.origin) if spec.submodule_search_locations else spec.origin)
        return spec


def _error(name: str, error: BaseException) -> dict[str, str]:
    return {
        "module": name,
        "error": "".join(traceback.format_exception_only(type(error), error)).strip(),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }


def probe(request: dict[str, Any]) -> dict[str, Any]:
    build_paths = [os.path.realpath(p) for p in request["paths"]]
    build_roots = [os.path.realpath(p) for p in request["roots"]]
    host_paths = [os.path.realpath(p) for p in request["host_paths"]]
    stdlib_paths = [p for p in sys.path if p and "site-packages" not in p]
    stdlib_roots = [os.path.realpath(p) for p in stdlib_paths]

    sys.path[:] = build_paths + stdlib_paths
    sys.path_importer_cache.clear()
    blocker = RemovedStdlibBlocker(request.get("removed_stdlib", []))
    stand_in = ExtensionStandIn(build_paths, build_roots, host_paths)
    runtime = RuntimeProvided(request.get("runtime_provided", []), host_paths)
    sys.meta_path[:0] = [blocker, stand_in]
    sys.meta_path.append(runtime)

    errors: list[dict[str, str]] = []
    imported: list[str] = []
    for name, attribute in request.get("handlers", []):
        try:
            module = importlib.import_module(name)
            imported.append(name)
        except BaseException as error:  # a module's import may raise anything, SystemExit included
            errors.append(_error(name, error))
            continue
        if not callable(getattr(module, attribute, None)):
            errors.append({"module": name, "error": f"{name} has no callable {attribute}", "traceback": ""})
    for package_name in request.get("walk", []):
        try:
            package = importlib.import_module(package_name)
        except BaseException as error:
            errors.append(_error(package_name, error))
            continue
        imported.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
            try:
                importlib.import_module(info.name)
                imported.append(info.name)
            except BaseException as error:
                errors.append(_error(info.name, error))

    substituted = {entry["module"] for entry in stand_in.substituted}
    runtime_roots = [os.path.realpath(root) for root in runtime.roots]
    origins: dict[str, list[str]] = {"build": [], "stdlib": [], "substituted": [], "runtime": [], "elsewhere": []}
    for name, module in sorted(sys.modules.items()):
        where = getattr(module, "__file__", None)
        if module is sys.modules["__main__"] or not isinstance(where, str):
            continue  # this script (also known as __mp_main__ once multiprocessing is imported), built-in, frozen
        if name in substituted:
            origins["substituted"].append(name)
        elif _inside(where, build_roots):
            origins["build"].append(name)
        elif _inside(where, runtime_roots):
            origins["runtime"].append(name)
        elif _inside(where, stdlib_roots) and "site-packages" not in where:
            origins["stdlib"].append(name)
        else:
            origins["elsewhere"].append(f"{name} ({where})")
    return {
        "python": list(sys.version_info[:2]),
        "imported": imported,
        "errors": errors,
        "substituted": stand_in.substituted,
        "unavailable": stand_in.unavailable,
        "runtime_provided": sorted(set(runtime.provided)),
        "blocked": sorted(set(blocker.blocked)),
        "origins": origins,
    }


def main(argv: Sequence[str]) -> int:
    with open(argv[1], encoding="utf-8") as handle:
        request = json.load(handle)
    result = probe(request)
    with open(request["result"], "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
