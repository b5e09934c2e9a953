"""Cold start: how long each handler module (every function of template.yaml) takes to import in a fresh
interpreter, next to a bare `import boto3`; and how large the shared layer is once unpacked.

The interpreter sees only what Lambda would put on its path, in Lambda's order: the function's code, the layer
(its requirements installed for this machine, plus `avatar_pipeline`), then the runtime's own boto3 — never this
project's virtualenv, whose test tools (moto, requests, ...) and OpenTelemetry SDK are in no function's package and
must not be found by an import. The environment is the function's, resolved from template.yaml, plus the variables the
Lambda runtime sets. A first round compiles the bytecode and is not counted: the figures are imports from bytecode, as
the layer ships its modules' cpython-313 bytecode (see `no_bytecode` for what a layer without it costs).

The tracing decision, measured on one representative handler (webhook's) in the same rounds: its import under what the
ADOT layer's wrapper sets up first (the optional call-level spans of `OpenTelemetryLayerArn`), and its import followed
by Powertools' `Tracer()` on the X-Ray SDK (as the handlers traced until issue 19); each package set installed into a
directory of its own, after the layer's on the path, as a second layer would be.

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

# The handler the tracing rows import: the one a caller waits on (the provider's callback), and a typical one.
TRACED_FUNCTION = "WebhookFunction"
# Any version of AWS's layer: the template then sets the wrapper and its variables (the local runtime's stand-in too).
ADOT_LAYER_ARN = "arn:aws:lambda:us-east-1:615299751070:layer:AWSOpenTelemetryDistroPython:29"
# What the ADOT layer brings that the wrapper sets up before the handler: pinned as requirements-dev.txt pins them.
ADOT_PACKAGES = ("opentelemetry-sdk", "opentelemetry-instrumentation-botocore", "opentelemetry-instrumentation-httpx")
# Powertools' Tracer as the handlers had it (the `tracer` extra): the X-Ray SDK, its latest 2.x.
XRAY_SDK = "aws-xray-sdk==2.15.0"
XRAY_END_OF_SUPPORT = "2027-02-25"
OTEL_LAYER_STAND_IN = ROOT / "local/avatar_local/twin/otel_layer.py"
_PARTS = (" setup", " handler", " after")  # a traced import's parts, keyed in a round as its whole is, plus these

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


# A handler imported with tracing set up as Lambda would: "adot", the ADOT wrapper's work first (the local stand-in's
# `start_tracing`, loaded from its file so no package of the local tooling is imported; spans would go to /dev/null),
# then the handler, wrapped in what start_tracing returns (if anything); "xray", the handler, then Powertools'
# Tracer() as the handlers had it (auto-patch on). "ms" counts all of it; the facts say the tracing was really on (a
# Tracer that finds itself outside Lambda disables itself).
_IMPORT_TRACED = """
import json, os, sys, time
sys.path[:0] = json.loads(sys.argv[2])
module, how = sys.argv[1], sys.argv[3]
started = time.perf_counter()
if how == "adot":
    import importlib.util, pathlib
    spec = importlib.util.spec_from_file_location("bench_otel_layer", sys.argv[5])
    layer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layer)
    wrap = layer.start_tracing(pathlib.Path(os.devnull), os.environ)
set_up = time.perf_counter()
handler = __import__(module)
if how == "adot" and callable(wrap):  # the stand-in's invocation span around the handler, as the layer's
    wrap(getattr(handler, os.environ.get("_HANDLER", ".lambda_handler").rsplit(".", 1)[1]))
imported = time.perf_counter()
if how == "xray":
    from aws_lambda_powertools import Tracer
    tracer = Tracer()
ended = time.perf_counter()
facts = {}
if how == "adot":
    from opentelemetry import trace
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    facts = {
        "provider": type(trace.get_tracer_provider()).__name__,
        "instrumented": [name for name, cls in (("botocore", BotocoreInstrumentor), ("httpx", HTTPXClientInstrumentor))
                         if cls().is_instrumented_by_opentelemetry],
        "stamped": "avatar_pipeline.adapters.otel_spans" in sys.modules,
        "sdk_file": sys.modules["opentelemetry.sdk.trace"].__file__,
    }
elif how == "xray":
    from aws_xray_sdk.core import patcher
    facts = {"disabled": bool(tracer.disabled), "patched": sorted(getattr(patcher, "_PATCHED_MODULES", ())),
             "sdk_file": patcher.__file__}
lazy = [name for name in json.loads(sys.argv[4]) if name in sys.modules]
print(json.dumps({"ms": (ended - started) * 1000, "setup_ms": (set_up - started) * 1000,
                  "handler_ms": (imported - set_up) * 1000, "after_ms": (ended - imported) * 1000,
                  "lazy": lazy, **facts}))
"""

_NO_PYCACHE = shutil.ignore_patterns("__pycache__")


def _pinned(requirement: str) -> str:
    for line in (ROOT / "requirements-dev.txt").read_text().splitlines():
        if re.match(rf"^{requirement}==", line.strip()):
            return line.strip()
    return requirement


def _installed_version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


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


def prepare_tracing(workdir: Path) -> dict[str, Path]:
    """The tracing packages, each set in a directory of its own: "adot", the OpenTelemetry SDK and the botocore and
    httpx instrumentations (what the ADOT layer's wrapper sets up); "xray", the X-Ray SDK Powertools' Tracer needs
    (without botocore, its other dependency: the layer has it)."""
    adot, xray = workdir / "adot" / "python", workdir / "xray-sdk" / "python"
    _pip("--only-binary=:all:", "--target", str(adot), *(_pinned(name) for name in ADOT_PACKAGES))
    _pip("--only-binary=:all:", "--no-deps", "--target", str(xray), XRAY_SDK, f"wrapt=={_installed_version('wrapt')}")
    return {"adot": adot, "xray": xray}


def _import_traced(module: str, paths: list[Path], env: dict[str, str], how: str) -> dict[str, Any]:
    """Import `module` in a fresh interpreter with tracing set up as `how` ("adot" or "xray") says: {"ms": all of it,
    "setup_ms": the wrapper's work before the import, "after_ms": the Tracer's after it, "lazy": as `_import`'s, and
    what shows the tracing was on}."""
    args = ["-I", "-S", "-c", _IMPORT_TRACED, module, json.dumps([str(p) for p in paths]), how, json.dumps(LAZY)]
    answer = run_child([*args, str(OTEL_LAYER_STAND_IN)], env=env)
    if how == "adot" and not (answer["stamped"] and answer["provider"] == "TracerProvider"):
        raise RuntimeError(f"{module} imported without the OpenTelemetry SDK's tracing on: {answer}")
    if how == "xray" and answer["disabled"]:
        raise RuntimeError(f"{module}'s Tracer() disabled itself: the environment does not look like Lambda's")
    return answer


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


def _paired(rounds: list[dict[str, float]], key: str, base: str) -> float:
    """The median of each round's `key` less its `base`: both measured in the same round, so what slowed one slowed
    the other."""
    return median([r[key] - r[base] for r in rounds])


def _tracing_figures(
    title: str,
    module: str,
    rounds: list[dict[str, float]],
    facts: dict[str, dict[str, Any]],
    boto3_ms: float,
    traced: str,
) -> list[Figure]:
    """The tracing decision's rows: the handler under the ADOT wrapper's setup, and with the X-Ray SDK's Tracer."""
    repeats = len(rounds)
    adot, xray = facts["adot"], facts["xray"]

    def extra(answer: dict[str, Any]) -> str:
        loaded = [name for name in answer["lazy"] if name not in ("opentelemetry", "aws_xray_sdk")]
        return f"; {' and '.join(loaded)} loaded too, which the handler alone defers" if loaded else ""

    def part(key: str) -> float:
        return median([r[key] for r in rounds])

    adot_ms = median([r["adot"] for r in rounds])
    xray_ms = median([r["xray"] for r in rounds])
    return [
        Figure(
            title,
            f"import `{module}` under the ADOT layer's wrapper (OpenTelemetry SDK, botocore and httpx instrumented)",
            adot_ms,
            "ms",
            repeats,
            baseline=boto3_ms,
            baseline_label="`import boto3`",
            note=f"informative, a lower bound: {_paired(rounds, 'adot', traced):+.0f} ms over `{module}` alone (same "
            f"rounds): setting up the SDK and instrumenting {' and '.join(adot['instrumented'])} took "
            f"{part('adot setup'):.0f} ms, then the import {part('adot handler'):.0f} ms (botocore and more already "
            f"loaded){extra(adot)}. What OpenTelemetryLayerArn adds to each cold start; the real layer's wrapper "
            "(opentelemetry-instrument) also loads AWS's distro and configurator, looks up every instrumentation's "
            "entry points and sets up its exporter: more than this",
        ),
        Figure(
            title,
            f"import `{module}`, then Powertools' `Tracer()` on the X-Ray SDK, as the handlers had it",
            xray_ms,
            "ms",
            repeats,
            baseline=boto3_ms,
            baseline_label="`import boto3`",
            note=f"informative: {_paired(rounds, 'xray', traced):+.0f} ms over `{module}` alone (same rounds); "
            f"`Tracer()` took {part('xray after'):.0f} ms after the import (auto-patch: "
            f"{', '.join(xray['patched']) or 'nothing'}){extra(xray)}. What the default (Lambda's active tracing, no "
            f"SDK in the function) saves at each cold start; the X-Ray SDK for Python's support ends "
            f"{XRAY_END_OF_SUPPORT}",
        ),
    ]


def measure(repeats: int, workdir: Path, say: Callable[[str], None], *, no_bytecode_repeats: int = 0) -> Section:
    started = time.monotonic()
    section = Section("cold", "1. Cold start")
    say("cold start: installing the layer's requirements and the runtime's boto3 for this machine…")
    functions = function_ids()
    specs = {logical_id: lambda_environment(logical_id) for logical_id in functions}
    dirs = prepare(workdir, {logical_id: Path(spec["code_dir"]) for logical_id, spec in specs.items()})
    say("cold start: installing the OpenTelemetry SDK and instrumentations, and the X-Ray SDK, each apart…")
    tracing_dirs = prepare_tracing(workdir)
    traced = TRACED_FUNCTION
    # The function's environment as the template sets it when OpenTelemetryLayerArn is given (the wrapper, the
    # instrumentations it disables); for the Tracer, Lambda's as it is (Powertools disables tracing outside Lambda).
    adot_parameters = {"OpenTelemetryLayerArn": ADOT_LAYER_ARN}
    tracing_envs = {
        "adot": lambda_environment(traced, extra_parameters=adot_parameters)["environment"],
        "xray": {k: v for k, v in specs[traced]["environment"].items() if k != "POWERTOOLS_TRACE_DISABLED"},
    }
    tracing_facts: dict[str, dict[str, Any]] = {}  # "adot"/"xray" -> the last round's answer
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
        for how, env in tracing_envs.items():
            paths = [dirs[traced], dirs["layer"], tracing_dirs[how], dirs["runtime"]]
            tracing_facts[how] = _import_traced(names[traced], paths, env, how)
            if not tracing_facts[how]["sdk_file"].startswith(str(tracing_dirs[how])):
                raise RuntimeError(
                    f"{how}: the SDK imported is not the one installed: {tracing_facts[how]['sdk_file']}"
                )
            times[how] = tracing_facts[how]["ms"]
            for part in _PARTS:  # not printed per round
                times[f"{how}{part}"] = tracing_facts[how][f"{part.strip()}_ms"]
        return times

    one_round()  # compiles the bytecode; not counted
    rounds = []
    for number in range(repeats):
        rounds.append(one_round())
        say(
            f"  round {number + 1}/{repeats}: "
            + ", ".join(
                f"{k.removesuffix('Function')} {v:.0f} ms" for k, v in rounds[-1].items() if not k.endswith(_PARTS)
            )
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
    section.figures += _tracing_figures(section.title, names[traced], rounds, tracing_facts, boto3_ms, traced)
    section.data = {
        "import_ms": {logical_id: median([r[logical_id] for r in rounds]) for logical_id in functions},
        "memory_mb": {logical_id: int(spec["memory_mb"]) for logical_id, spec in specs.items()},
        "modules": dict(names),
        "boto3_ms": boto3_ms,
        "repeats": repeats,
    }
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
    wrapper = tracing_envs["adot"]["AWS_LAMBDA_EXEC_WRAPPER"]
    section.method = (
        f"Each handler module imported in a fresh `python -I -S` whose path is only what Lambda's would be (function "
        f"code, the layer's requirements installed for this machine, the runtime's {_pinned('boto3')}) and whose "
        f"environment is the function's from template.yaml plus Lambda's own variables; bytecode compiled by a first "
        f"round that is not counted (the layer ships its cpython-313 bytecode: layers/shared/bytecode-compiler); "
        f"{repeats} rounds, each importing boto3, then the handler of each of the template's {len(functions)} "
        f"functions, then the floor (a module importing only boto3, pydantic and Powertools' Logger and Metrics), "
        f"then {names[traced]} twice more with tracing: under the ADOT layer's wrapper (the template's environment "
        f"with OpenTelemetryLayerArn set, AWS_LAMBDA_EXEC_WRAPPER={wrapper} among it; before the import, "
        f"counted, the local stand-in's start_tracing: the SDK's TracerProvider with a span processor writing to "
        f"/dev/null, BotocoreInstrumentor and HTTPXClientInstrumentor instrumented; "
        f"{', '.join(_pinned(name) for name in ADOT_PACKAGES)} installed apart, after the layer on the path), "
        f"and followed by Powertools' `Tracer()` (auto-patch, the function's Lambda environment; {XRAY_SDK} "
        f"installed apart, after the layer). "
        f"A row's note names any of {', '.join(LAZY)} its handler imported (they should load only on the paths "
        f"that use them). The layer's size: layers/shared/Makefile "
        f"run into a temporary ARTIFACTS_DIR (as `sam build` does), files' sizes summed."
    )
    section.seconds = time.monotonic() - started
    return section
