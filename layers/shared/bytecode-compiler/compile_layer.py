"""Run by compile.mjs inside Pyodide: compiles a layer's python/ directory to this interpreter's bytecode.

``main`` refuses to compile unless this interpreter is the Lambda runtime's CPython version (its bytecode would be
ignored there), compiles every ``.py`` file to ``__pycache__/<name>.<cache tag>.pyc`` as unchecked-hash pycs (source
and bytecode ship together and never change apart, so the import system need not stat or hash the source), and
fails if any file does not compile: a layer with a module missing its bytecode would compile it at every cold start.
"""

from __future__ import annotations

import importlib.util
import py_compile
import sys
from pathlib import Path


def main(root: str, python_version: str) -> int:
    major, minor = (int(part) for part in python_version.split("."))
    wanted_tag = f"cpython-{major}{minor}"
    running = f"{sys.implementation.cache_tag} (Python {sys.version.split()[0]})"
    if sys.implementation.cache_tag != wanted_tag:
        print(f"this compiler is {running}, not {wanted_tag}: its bytecode would be ignored", file=sys.stderr)
        return 1
    failures = []
    sources = sorted(Path(root).rglob("*.py"))
    for source in sources:
        try:
            py_compile.compile(
                str(source), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
            )
        except py_compile.PyCompileError as error:
            failures.append(f"{source.relative_to(root)}: {error.exc_type_name}: {error.exc_value}")
    print(
        f"compiled {len(sources) - len(failures)} of {len(sources)} modules to {running} bytecode "
        f"(magic {importlib.util.MAGIC_NUMBER.hex()}, unchecked hash)"
    )
    for failure in failures:
        print(f"  failed: {failure}", file=sys.stderr)
    return 1 if failures else 0
