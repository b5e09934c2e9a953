"""Cold start: how long each handler module (every function of template.yaml) takes to import in a fresh
interpreter, next to a bare `import boto3`; and how large the shared layer is once unpacked.

The interpreter sees only what Lambda would put on its path, in Lambda's order: the function's code, the layer
(its requirements installed for this machine, plus `avatar_pipeline`), then the runtime's own boto3 — never this
project's virtualenv, whose test tools (moto, requests, ...) and OpenTelemetry SDK are in no function's package and
must not be found by an import. The environment is the function's, resolved from template.yaml, plus the variables the
Lambda runtime sets. A first round compiles the bytecode and is not counted: the figures are imports from bytecode, as
the layer ships its modules' cpython-313 bytecode (see `no_bytecode` for what a layer without it costs).

The layer's size is that of the real artifact: layers/shared/Makefile run into a temporary ARTIFACTS_DIR, as
`sam build` runs it (arm64 wheels for CPython 3.13), summing the files' sizes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avatar_local.bench.common import MIB, ROOT, Figure, Section, function_ids, lambda_environment, median, run_child

TARGET_RATIO = 1.5
# What the Lambda Python runtime ships itself (boto3 and its dependencies); a layer copy of any of them shadows it.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath", "urllib3", "dateutil", "six")
LAMBDA_UNPACKED_LIMIT_MIB = 250

# What every handler needs whatever it does, and nothing of the pipeline's own: the floor lazy imports cannot go below.
# No Tracer (Lambda traces invocations itself) and no httpx: only the paths that call a provider out import it.
_FLOOR_MODULE = """
import boto3
import pydantic
from aws_lambda_powertools import Logger, Metrics

logger, metrics = Logger(), Metrics()


class Model(pydantic.BaseModel):
    value: int
"""
FLOOR = "bench_floor_handler"
FLOOR_LABEL = "import boto3, pydantic and Powertools' Logger and Metrics only"

# Heavy packages the handlers should import only on the paths that need them: one imported with a handler is named in
# its row's note (a lazy import lost shows there before it shows in the medians).
LAZY = ("httpx", "PIL", "mutagen", "cryptography", "opentelemetry", "aws_xray_sdk")

_IMPORT_ONE = """
import json, sys, time
sys.path[:0] = json.loads(sys.argv[2])
started = time.perf_counter()
__import__(sys.argv[1])
elapsed = (time.perf_counter() - started) * 1000
lazy = [name for name in json.loads(sys.argv[3]) if name in sys.modules]
print(json.dumps({"ms": elapsed, "modules": len(sys.modules), "lazy": lazy}))
"""


_NO_PYCACHE = shutil.ignore_patterns("__pycache__")


def _pinned(requirement: str) -> str:
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        if re.match(rf"^{requirement}==", line.strip()):
            return line.strip()
    return requirement


def _pip(*args: str) -> None:
    subprocess.run(  # noqa: S603 - pip of our own interpreter
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        check=True,
        capture_output=True,
    )


def prepare(workdir: Path, code_dirs: dict[str, Path]) -> dict[str, Path]:
    """The directories Lambda would have: each function's code (`code_dirs`: its CodeUri by logical id; its copy is
    under the same key in the answer), the layer (host wheels), the runtime's boto3."""
    layer = workdir / "opt" / "python"
    runtime = workdir / "runtime"
    _pip("--only-binary=:all:", "--target", str(layer), "-r", str(ROOT / "layers/shared/requirements.txt"))
    _pip("--only-binary=:all:", "--target", str(runtime), _pinned("boto3"))
    shutil.copytree(ROOT / "layers/shared/avatar_pipeline", layer / "avatar_pipeline", ignore=_NO_PYCACHE)
    dirs = {"layer": layer, "runtime": runtime}
    for logical_id, code_dir in code_dirs.items():
        # A copy without this machine's stale bytecode: the uncounted first round compiles it afresh.
        dirs[logical_id] = workdir / "task" / code_dir.name
        shutil.copytree(code_dir, dirs[logical_id], ignore=_NO_PYCACHE)
    dirs["floor"] = workdir / "task" / "floor"
    dirs["floor"].mkdir()
    (dirs["floor"] / f"{FLOOR}.py").write_text(_FLOOR_MODULE)
    return dirs


def _import(module: str, paths: list[Path], env: dict[str, str], *, no_bytecode: bool = False) -> dict[str, Any]:
    """Import `module` in a fresh interpreter: {"ms": its import time, "lazy": the LAZY packages it imported}."""
    flags = ["-I", "-S", *(["-B"] if no_bytecode else [])]
    return run_child(
        [*flags, "-c", _IMPORT_ONE, module, json.dumps([str(p) for p in paths]), json.dumps(LAZY)], env=env
    )


def _import_ms(module: str, paths: list[Path], env: dict[str, str], *, no_bytecode: bool = False) -> float:
    return float(_import(module, paths, env, no_bytecode=no_bytecode)["ms"])


def layer_size(workdir: Path) -> dict[str, float]:
    """The layer built as `sam build` builds it; its unpacked size, and how much of it the runtime already has."""
    artifacts = workdir / "layer-arm64"
    subprocess.run(  # noqa: S603 - make, with our own interpreter
        ["make", "--no-print-directory", "build-SharedLayer", f"ARTIFACTS_DIR={artifacts}", f"PYTHON={sys.executable}"],  # noqa: S607
        cwd=ROOT / "layers/shared",
        check=True,
        capture_output=True,
    )

    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())

    python = artifacts / "python"
    provided = sum(
        size(entry) if entry.is_dir() else entry.stat().st_size
        for entry in python.iterdir()
        if entry.name.split("-")[0].split(".")[0].removeprefix("python_") in RUNTIME_PROVIDED
    )
    largest = sorted(((size(e) if e.is_dir() else e.stat().st_size, e.name) for e in python.iterdir()), reverse=True)
    return {
        "total_mib": size(artifacts) / MIB,
        "runtime_provided_mib": provided / MIB,
        "largest": [f"{name} {bytes_ / MIB:.1f}" for bytes_, name in largest[:5]],  # type: ignore[dict-item]
    }


def measure(repeats: int, workdir: Path, say: Callable[[str], None], *, no_bytecode_repeats: int = 0) -> Section:
    started = time.monotonic()
    section = Section("cold", "1. Cold start")
    say("cold start: installing the layer's requirements and the runtime's boto3 for this machine…")
    functions = function_ids()
    specs = {logical_id: lambda_environment(logical_id) for logical_id in functions}
    dirs = prepare(workdir, {logical_id: Path(spec["code_dir"]) for logical_id, spec in specs.items()})
    names = {logical_id: spec["module"] for logical_id, spec in specs.items()}
    baseline_env = specs["SubmitFunction"]["environment"]
    lazy: dict[str, list[str]] = {}  # function -> the LAZY packages its handler imported (the last round's)

    def handler_paths(logical_id: str) -> list[Path]:
        return [dirs[logical_id], dirs["layer"], dirs["runtime"]]

    def one_round() -> dict[str, float]:
        times = {"boto3": _import_ms("boto3", [dirs["runtime"]], baseline_env)}
        for logical_id in functions:
            result = _import(names[logical_id], handler_paths(logical_id), specs[logical_id]["environment"])
            times[logical_id], lazy[logical_id] = float(result["ms"]), list(result["lazy"])
        floor_env = specs["FinalizeFunction"]["environment"]
        times[FLOOR] = _import_ms(FLOOR, [dirs["floor"], dirs["layer"], dirs["runtime"]], floor_env)
        return times

    one_round()  # compiles the bytecode; not counted
    rounds = []
    for number in range(repeats):
        rounds.append(one_round())
        say(
            f"  round {number + 1}/{repeats}: "
            + ", ".join(f"{k.removesuffix('Function')} {v:.0f} ms" for k, v in rounds[-1].items())
        )
    boto3_ms = median([r["boto3"] for r in rounds])
    floor_ms = median([r[FLOOR] for r in rounds])
    for logical_id in functions:
        value = median([r[logical_id] for r in rounds])
        also = f"; it imports {', '.join(lazy[logical_id])} too" if lazy[logical_id] else ""
        section.figures.append(
            Figure(
                section.title,
                f"import `{names[logical_id]}`",
                value,
                "ms",
                repeats,
                baseline=boto3_ms,
                baseline_label="`import boto3`",
                target=f"≤ {TARGET_RATIO}\u00d7",
                met=value / boto3_ms <= TARGET_RATIO,
                note=f"{value - floor_ms:+.0f} ms over the floor (the row below): the pipeline's code and the "
                f"Powertools utilities it uses{also}",
            )
        )
    section.figures.append(
        Figure(
            section.title,
            FLOOR_LABEL,
            floor_ms,
            "ms",
            repeats,
            baseline=boto3_ms,
            baseline_label="`import boto3`",
            note="informative: what every handler needs whatever it does (no Tracer: Lambda traces invocations "
            "itself; no httpx: only the paths that call out import it) — the floor for lazy imports; "
            + (
                f"at {floor_ms / boto3_ms:.2f}\u00d7 it alone misses the {TARGET_RATIO}\u00d7 target"
                if floor_ms / boto3_ms > TARGET_RATIO
                else f"at {floor_ms / boto3_ms:.2f}\u00d7, {TARGET_RATIO * boto3_ms - floor_ms:.0f} ms left under the "
                "target for the pipeline's own code"
            ),
        )
    )
    if no_bytecode_repeats:
        # A layer without bytecode, as it shipped before layers/shared/bytecode-compiler: Lambda's /opt is read-only,
        # so every module would be compiled again at each cold start.
        for logical_id in ("SubmitFunction", "FinalizeFunction"):
            fresh = workdir / "no-pyc" / logical_id
            times = []
            for _ in range(no_bytecode_repeats):
                shutil.rmtree(fresh, ignore_errors=True)
                paths = []
                for path in handler_paths(logical_id)[:2]:
                    shutil.copytree(path, fresh / path.name, ignore=_NO_PYCACHE)
                    paths.append(fresh / path.name)
                env = specs[logical_id]["environment"]
                times.append(_import_ms(names[logical_id], [*paths, dirs["runtime"]], env, no_bytecode=True))
            value = median(times)
            section.figures.append(
                Figure(
                    section.title,
                    f"import `{names[logical_id]}`, layer without bytecode",
                    value,
                    "ms",
                    no_bytecode_repeats,
                    baseline=boto3_ms,
                    baseline_label="`import boto3`",
                    note="informative: what the layer's shipped cpython-313 bytecode saves at each cold start",
                )
            )
    say("cold start: building the layer for arm64 as `sam build` does, to size it…")
    sizes = layer_size(workdir)
    section.figures.append(
        Figure(
            section.title,
            "shared layer, unpacked (arm64, CPython 3.13)",
            sizes["total_mib"],
            "MiB",
            1,
            baseline=LAMBDA_UNPACKED_LIMIT_MIB,
            baseline_label="Lambda's limit (function + layers)",
            note=f"{sizes['runtime_provided_mib']:.1f} MiB of it is boto3's family, which the runtime has; "
            f"largest: {', '.join(sizes['largest'])} MiB",  # type: ignore[arg-type]
            decimals=1,
        )
    )
    section.method = (
        f"Each handler module imported in a fresh `python -I -S` whose path is only what Lambda's would be (function "
        f"code, the layer's requirements installed for this machine, the runtime's {_pinned('boto3')}) and whose "
        f"environment is the function's from template.yaml plus Lambda's own variables; bytecode compiled by a first "
        f"round that is not counted (the layer ships its cpython-313 bytecode: layers/shared/bytecode-compiler); "
        f"{repeats} rounds, each importing boto3, then the handler of each of the template's {len(functions)} "
        f"functions, then the floor (a module importing only boto3, pydantic and Powertools' Logger and Metrics). "
        f"A row's note names any of {', '.join(LAZY)} its handler imported (they should load only on the paths "
        f"that use them). The layer's size: layers/shared/Makefile "
        f"run into a temporary ARTIFACTS_DIR (as `sam build` does), files' sizes summed."
    )
    section.seconds = time.monotonic() - started
    return section
