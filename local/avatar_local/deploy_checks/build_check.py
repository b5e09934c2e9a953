"""Checks what `sam build` produced before it is deployed:
``python -m avatar_local.deploy_checks.build_check [build dir]``.

For every function of template.yaml, as built under ``.aws-sam/build``:

* the handler module imports in a fresh interpreter whose ``sys.path`` is only the function's build directory and
  its layers' ``python/`` directories (plus the standard library), the way Lambda lays them out; every module
  imported comes from the build, the standard library, or (boto3 and what it needs) the Lambda runtime itself;
* the artifact's compiled code is for the function's target (its Runtime and Architectures): each extension module
  is tagged for that CPython and machine (``.cpython-313-aarch64-linux-gnu.so``) or is ``abi3``, every ELF file is
  for that machine, and each distribution carrying compiled code has a wheel tag the target accepts (manylinux no
  newer than the runtime's glibc), and bytecode is that CPython's: every ``.py`` module of a layer has its
  ``__pycache__/<name>.cpython-313.pyc`` (Lambda's /opt is read-only: a module without one is compiled again at every
  cold start), each such file starts with that release's magic number and is an unchecked-hash pyc, and there is no
  bytecode of another Python. This machine (x86_64, an older CPython) cannot load that code, so while the
  handler is imported each compiled module is loaded from the development virtualenv's copy of the same module;
  the report names every module stood in for that way (see :mod:`avatar_local.deploy_checks.build_probe`);
* the first-party code in the build is the code in the source tree (a stale build fails), and the function plus its
  layers fit Lambda's 250 MB unzipped limit. The layers' unpacked sizes are printed.

Every module of the layers' first-party packages (those no installed distribution owns: avatar_pipeline) is imported
too, so a module no handler imports at load time is still checked. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from avatar_local.twin.template import FunctionSpec, TemplateError, functions, load_template, template_layers

ROOT: Final = Path(__file__).resolve().parents[3]
PROBE: Final = Path(__file__).with_name("build_probe.py")
PROBE_TIMEOUT_SECONDS: Final = 180

# Lambda's limit on a function's code plus all its layers, unzipped.
UNZIPPED_LIMIT_BYTES: Final = 250 * 1024 * 1024
# What the Lambda Python runtime ships besides the standard library (boto3 and its dependencies); a build may leave
# these out. Anything else a handler imports must be in the build.
RUNTIME_PROVIDED: Final = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3")
# Standard-library modules removed in a Python version: present on an older interpreter, missing on the target.
REMOVED_FROM_STDLIB: Final = {
    (3, 12): ("asynchat", "asyncore", "distutils", "imp", "smtpd"),
    (3, 13): (
        "aifc",
        "audioop",
        "cgi",
        "cgitb",
        "chunk",
        "crypt",
        "imghdr",
        "lib2to3",
        "mailcap",
        "msilib",
        "nis",
        "nntplib",
        "ossaudiodev",
        "pipes",
        "sndhdr",
        "spwd",
        "sunau",
        "telnetlib",
        "tkinter.tix",
        "uu",
        "xdrlib",
    ),
}
ELF_MACHINES: Final = {3: "i386", 62: "x86_64", 183: "aarch64"}
# The number a .pyc file starts with (then b"\r\n"), per CPython version: importlib.util.MAGIC_NUMBER there.
BYTECODE_MAGIC: Final = {(3, 12): 3531, (3, 13): 3571}
# A .pyc's flags word after the magic number: hash-based, source not checked. Timestamp pycs would compare the
# source's mtime (as unzipped on Lambda) and checked-hash ones hash the source at every import.
UNCHECKED_HASH_FLAGS: Final = 0b01
LAMBDA_MACHINES: Final = {"arm64": "aarch64", "x86_64": "x86_64"}
# Amazon Linux 2023 (python3.12 and later) has glibc 2.34; Amazon Linux 2 (earlier runtimes) 2.26.
AL2023_GLIBC: Final = (2, 34)
AL2_GLIBC: Final = (2, 26)
LEGACY_MANYLINUX: Final = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}

_RUNTIME: Final = re.compile(r"python3\.(\d+)")
_EXTENSION: Final = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\.(?P<tag>[^.]+))?\.so")
_CPYTHON_TAG: Final = re.compile(r"cpython-3(?P<minor>\d+)-(?P<machine>[a-z0-9_]+)-linux-gnu")
_BYTECODE: Final = re.compile(r".+\.(?P<tag>[a-z]+-\d+)(?:\.opt-\d)?\.pyc")
_MANYLINUX: Final = re.compile(r"manylinux_(?P<major>\d+)_(?P<minor>\d+)_(?P<machine>\w+)")


class BuildCheckError(Exception):
    """The build cannot be checked at all (no build, no template, unreadable template)."""


@dataclass(frozen=True, slots=True)
class Target:
    """What a function runs on: CPython version, machine (as ELF and wheel tags name it) and glibc version."""

    python: tuple[int, int]
    machine: str
    glibc: tuple[int, int]

    @property
    def bytecode_tag(self) -> str:
        return f"cpython-{self.python[0]}{self.python[1]}"

    @property
    def extension_tag(self) -> str:
        return f"{self.bytecode_tag}-{self.machine}-linux-gnu"

    def __str__(self) -> str:
        return f"CPython {self.python[0]}.{self.python[1]} {self.machine} (glibc {self.glibc[0]}.{self.glibc[1]})"


def target_of(function: FunctionSpec) -> Target:
    """The function's Runtime and Architectures (Globals merged) as a :class:`Target`."""
    runtime = function.runtime or ""
    matched = _RUNTIME.fullmatch(runtime)
    if not matched:
        raise BuildCheckError(f"{function.logical_id}: runtime {runtime!r} is not a python3.x runtime")
    architectures = function.properties.get("Architectures") or ["x86_64"]
    if not isinstance(architectures, list) or len(architectures) != 1 or architectures[0] not in LAMBDA_MACHINES:
        raise BuildCheckError(f"{function.logical_id}: unexpected Architectures {architectures!r}")
    python = (3, int(matched.group(1)))
    return Target(python, LAMBDA_MACHINES[architectures[0]], AL2023_GLIBC if python >= (3, 12) else AL2_GLIBC)


def removed_stdlib(host: tuple[int, int], target: tuple[int, int]) -> list[str]:
    """Standard-library modules the host interpreter has and the target Python does not."""
    return sorted(name for version, names in REMOVED_FROM_STDLIB.items() if host < version <= target for name in names)


# ------------------------------------------------------------------------------------------------ compiled code


def elf_machine(path: Path) -> str | None:
    """The machine an ELF file is built for ("aarch64", "x86_64", "32-bit ...", "machine 40"), None if not ELF."""
    try:
        with path.open("rb") as handle:
            header = handle.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    number = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    machine = ELF_MACHINES.get(number, f"machine {number}")
    return machine if header[4] == 2 else f"32-bit {machine}"


def extension_module_tag(filename: str) -> str | None:
    """For an importable extension-module file name, its tag ("cpython-313-aarch64-linux-gnu", "abi3", "" for an
    untagged ``name.so``); None for anything else (a bundled shared library such as ``libjpeg-8004.so.62``)."""
    matched = _EXTENSION.fullmatch(filename)
    if not matched:
        return None
    return matched.group("tag") or ""


def extension_tag_problem(tag: str, target: Target) -> str | None:
    """Why an extension module with this file-name tag cannot load on the target, or None if it can."""
    if tag in (target.extension_tag, "abi3"):
        return None
    cpython = _CPYTHON_TAG.fullmatch(tag)
    if cpython:
        return f"built for CPython 3.{cpython.group('minor')} {cpython.group('machine')}, not {target}"
    if tag == "":
        return None  # an untagged name.so loads on any CPython; its ELF header still has to match the machine
    return f"tag {tag!r} is not for {target}"


def wheel_tag_fits(tag: str, target: Target) -> bool:
    """Whether a wheel tag ("cp313-cp313-manylinux_2_28_aarch64", "cp39-abi3-manylinux2014_aarch64", "py3-none-any",
    or a compressed set such as "py2.py3-none-any") installs on the target."""
    parts = tag.split("-")
    if len(parts) != 3:
        return False
    return any(
        _single_tag_fits(interpreter, abi, platform, target)
        for interpreter in parts[0].split(".")
        for abi in parts[1].split(".")
        for platform in parts[2].split(".")
    )


def _single_tag_fits(interpreter: str, abi: str, platform: str, target: Target) -> bool:
    version = f"{target.python[0]}{target.python[1]}"
    if platform != "any":
        legacy = platform.rsplit("_", 1)
        if legacy[0] in LEGACY_MANYLINUX and legacy[1:] == [target.machine]:
            glibc = LEGACY_MANYLINUX[legacy[0]]
        else:
            manylinux = _MANYLINUX.fullmatch(platform)
            if not manylinux or manylinux.group("machine") != target.machine:
                return False
            glibc = (int(manylinux.group("major")), int(manylinux.group("minor")))
        if glibc > target.glibc:
            return False
    if abi == "none":
        return interpreter in ("py3", f"py{version}", f"cp{version}")
    if abi == "abi3":
        cp = re.fullmatch(r"cp3(\d+)", interpreter)
        return cp is not None and int(cp.group(1)) <= target.python[1]
    return interpreter == f"cp{version}" and abi == f"cp{version}"


def bytecode_header_problem(path: Path, target: Target) -> str | None:
    """Why a .pyc file named for the target's CPython would not be used as it is there, or None if it would."""
    version = f"CPython {target.python[0]}.{target.python[1]}"
    magic = BYTECODE_MAGIC.get(target.python)
    if magic is None:
        return f"no magic number known for {version}: add it to BYTECODE_MAGIC"
    try:
        with path.open("rb") as handle:
            header = handle.read(8)
    except OSError as error:
        return f"unreadable: {error}"
    expected = magic.to_bytes(2, "little") + b"\r\n"
    if header[:4] != expected:
        return f"magic number {header[:4].hex() or 'missing'}, not {version}'s {expected.hex()} ({magic})"
    if header[4:8] != UNCHECKED_HASH_FLAGS.to_bytes(4, "little"):
        return f"flags {header[4:8].hex() or 'missing'}: not an unchecked-hash pyc, so the source is checked at import"
    return None


@dataclass(frozen=True, slots=True)
class Distribution:
    """An installed distribution in a build directory, read from its .dist-info."""

    name: str
    version: str
    tags: tuple[str, ...]
    files: frozenset[Path]  # resolved paths, from RECORD

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


def distributions(directory: Path) -> list[Distribution]:
    found = []
    for info in sorted(directory.glob("*.dist-info")):
        metadata = _headers(info / "METADATA")
        wheel = info / "WHEEL"
        tags = tuple(value for key, value in _header_items(wheel) if key == "Tag")
        files: set[Path] = set()
        record = info / "RECORD"
        if record.is_file():
            with record.open(encoding="utf-8", newline="") as rows:
                files.update((directory / row[0]).resolve() for row in csv.reader(rows) if row and row[0])
        found.append(
            Distribution(
                name=metadata.get("Name", info.name.removesuffix(".dist-info")),
                version=metadata.get("Version", "?"),
                tags=tags,
                files=frozenset(files),
            )
        )
    return found


def _header_items(path: Path) -> Iterable[tuple[str, str]]:
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            return  # headers end at the first blank line (METADATA's body follows)
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip(), value.strip()


def _headers(path: Path) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in _header_items(path):
        headers.setdefault(key, value)
    return headers


def owner(path: Path, dists: Sequence[Distribution]) -> Distribution | None:
    resolved = path.resolve()
    return next((dist for dist in dists if resolved in dist.files), None)


@dataclass(slots=True)
class ArtifactScan:
    """What :func:`scan_artifact` found in one build directory."""

    files: int = 0
    size: int = 0
    extension_modules: list[Path] = field(default_factory=list)
    shared_libraries: list[Path] = field(default_factory=list)
    modules: int = 0  # .py files
    without_bytecode: list[Path] = field(default_factory=list)  # .py files with no bytecode for the target
    problems: list[str] = field(default_factory=list)


def scan_artifact(directory: Path, target: Target) -> ArtifactScan:
    """Size, file count and compiled code of one build directory; ``problems`` lists code the target cannot load."""
    scan = ArtifactScan()
    foreign_bytecode: list[Path] = []
    unusable_bytecode: list[str] = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        scan.files += 1
        scan.size += path.stat().st_size
        relative = path.relative_to(directory)
        bytecode = _BYTECODE.fullmatch(path.name)
        if bytecode and bytecode.group("tag") != target.bytecode_tag:
            foreign_bytecode.append(relative)
        elif bytecode:
            problem = bytecode_header_problem(path, target)
            if problem:
                unusable_bytecode.append(f"{relative}: {problem}")
        if path.suffix == ".py":
            scan.modules += 1
            if not (path.parent / "__pycache__" / f"{path.stem}.{target.bytecode_tag}.pyc").is_file():
                scan.without_bytecode.append(relative)
        machine = elf_machine(path)
        tag = extension_module_tag(path.name)
        if tag is not None:
            scan.extension_modules.append(path)
            problem = extension_tag_problem(tag, target)
            if problem:
                scan.problems.append(f"{relative}: {problem}")
        elif machine is not None:
            scan.shared_libraries.append(path)
        if tag is not None and machine is None:
            scan.problems.append(f"{relative}: named like an extension module but not an ELF file")
        elif machine is not None and machine != target.machine:
            scan.problems.append(f"{relative}: ELF for {machine}, not {target.machine}")
    if foreign_bytecode:
        scan.problems.append(
            f"{len(foreign_bytecode)} bytecode files of another Python, dead weight in the artifact "
            f"(e.g. {foreign_bytecode[0]})"
        )
    if unusable_bytecode:
        scan.problems.append(
            f"{len(unusable_bytecode)} {target.bytecode_tag} bytecode files {target} would not use as they are "
            f"(e.g. {unusable_bytecode[0]})"
        )
    site_dirs = sorted({info.parent for info in directory.rglob("*.dist-info") if info.is_dir()})
    for dist in (dist for site_dir in site_dirs for dist in distributions(site_dir)):
        compiled = [f for f in dist.files if f.is_file() and (elf_machine(f) or extension_module_tag(f.name))]
        if compiled and not any(wheel_tag_fits(tag, target) for tag in dist.tags):
            tags = ", ".join(dist.tags) or "no wheel tags"
            scan.problems.append(f"{dist.label} carries compiled code but its wheel ({tags}) is not for {target}")
    return scan


# ------------------------------------------------------------------------------------------------ the build


@dataclass(frozen=True, slots=True)
class BuiltFunction:
    logical_id: str
    handler: str
    module: str
    attribute: str
    target: Target
    code_dir: Path  # in the build
    source_dir: Path  # in the source tree
    layers: tuple[tuple[str, Path, Path], ...]  # (logical id, built ContentUri, source ContentUri)

    def python_paths(self) -> list[Path]:
        """sys.path as Lambda builds it: the function's code, then each layer's python/ directories."""
        paths = [self.code_dir]
        for _, content, _ in self.layers:
            version = f"python{self.target.python[0]}.{self.target.python[1]}"
            paths += [content / "python" / "lib" / version / "site-packages", content / "python"]
        return [p for p in paths if p.is_dir()]


def built_functions(build_dir: Path, source_template: Path) -> list[BuiltFunction]:
    """Every function of the source template, located in the build (whose template SAM rewrote)."""
    built_template_path = build_dir / "template.yaml"
    if not built_template_path.is_file():
        raise BuildCheckError(f"no build at {build_dir} ({built_template_path.name} missing): run `make build` first")
    try:
        source, built = load_template(source_template), load_template(built_template_path)
    except TemplateError as error:
        raise BuildCheckError(str(error)) from error
    source_specs = {spec.logical_id: spec for spec in functions(source)}
    built_specs = {spec.logical_id: spec for spec in functions(built)}
    missing = sorted(set(source_specs) - set(built_specs))
    if missing:
        raise BuildCheckError(f"functions of {source_template.name} not in the build: {missing}: run `make build`")
    result = []
    for logical_id, spec in source_specs.items():
        built_spec = built_specs[logical_id]
        try:  # only the template's own layers (!Ref to an AWS::Serverless::LayerVersion) can be checked
            built_layers, source_layers = template_layers(built, built_spec), template_layers(source, spec)
        except TemplateError as error:
            raise BuildCheckError(str(error)) from error
        layers = tuple(
            (layer_id, build_dir / built_uri, source_template.parent / source_uri)
            for (layer_id, built_uri), (_, source_uri) in zip(built_layers, source_layers, strict=True)
        )
        result.append(
            BuiltFunction(
                logical_id=logical_id,
                handler=spec.handler,
                module=spec.module,
                attribute=spec.attribute,
                target=target_of(spec),
                code_dir=build_dir / built_spec.code_uri,
                source_dir=source_template.parent / spec.code_uri,
                layers=layers,
            )
        )
    return result


def first_party_packages(python_dir: Path) -> list[str]:
    """Top-level packages in a layer's python/ directory that no distribution installed: the project's own."""
    owned = set().union(*(dist.files for dist in distributions(python_dir))) if python_dir.is_dir() else set()
    return sorted(
        child.name
        for child in python_dir.iterdir()
        if child.is_dir() and (child / "__init__.py").is_file() and (child / "__init__.py").resolve() not in owned
    )


def stale_files(source_dir: Path, built_dir: Path) -> list[str]:
    """Python files that differ between the source tree and the build (either side missing counts)."""

    def sources(root: Path) -> dict[Path, bytes]:
        return {
            path.relative_to(root): path.read_bytes()
            for path in root.rglob("*.py")
            if "__pycache__" not in path.relative_to(root).parts
        }

    left, right = sources(source_dir), sources(built_dir)
    return sorted(str(name) for name in set(left) | set(right) if left.get(name) != right.get(name))


def host_paths() -> list[str]:
    """Where this interpreter's installed packages are: the stand-ins for compiled modules come from here."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["platlib"], paths["purelib"]]))


def run_probe(
    paths: Sequence[Path],
    *,
    handlers: Sequence[tuple[str, str]] = (),
    walk: Sequence[str] = (),
    target: Target,
    environment: dict[str, str] | None = None,
    host: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Import ``handlers`` / every module of the ``walk`` packages in a fresh interpreter from ``paths`` only."""
    with tempfile.TemporaryDirectory(prefix="build-probe-") as scratch:
        request_path, result_path = Path(scratch) / "request.json", Path(scratch) / "result.json"
        request = {
            "paths": [str(p) for p in paths],
            "roots": [str(p) for p in paths],
            "host_paths": list(host if host is not None else host_paths()),
            "handlers": [list(h) for h in handlers],
            "walk": list(walk),
            "runtime_provided": list(RUNTIME_PROVIDED),
            "removed_stdlib": removed_stdlib(sys.version_info[:2], target.python),
            "result": str(result_path),
        }
        request_path.write_text(json.dumps(request), encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(environment or {})}
        # -B: the build is what gets deployed; this interpreter's bytecode must not be written into it.
        command = [sys.executable, "-I", "-S", "-B", str(PROBE), str(request_path)]
        completed = subprocess.run(  # noqa: S603 - this interpreter, this package's probe
            command, capture_output=True, text=True, env=env, timeout=PROBE_TIMEOUT_SECONDS, check=False, cwd=scratch
        )
        if completed.returncode != 0 or not result_path.is_file():
            raise BuildCheckError(f"the import probe crashed ({completed.returncode}):\n{completed.stderr.strip()}")
        result: dict[str, Any] = json.loads(result_path.read_text(encoding="utf-8"))
        result["output"] = completed.stdout + completed.stderr
        return result


def probe_environment(spec_environment: dict[str, Any]) -> dict[str, str]:
    """What the handler sees at import: the template's literal variables and a Region."""
    environment = {name: value for name, value in spec_environment.items() if isinstance(value, str)}
    environment.update(
        {
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "POWERTOOLS_DEV": "false",
        }
    )
    return environment


# ------------------------------------------------------------------------------------------------ the report


@dataclass(slots=True)
class Report:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)

    def fail(self, line: str) -> None:
        self.failures.append(line)
        self.lines.append(f"  FAIL {line}")


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size / 1000:.1f} kB"


# Modules of the layer that only run with another layer beside it, and the package that layer brings: their import
# may fail for want of that package alone (the handlers import them only when that layer's wrapper runs them).
NEEDS_ANOTHER_LAYER: Final = {
    "avatar_pipeline.adapters.otel_spans": ("opentelemetry", "AWS's OpenTelemetry layer (OpenTelemetryLayerArn)"),
}


def _probe_findings(report: Report, what: str, result: dict[str, Any], dists: Sequence[Distribution]) -> None:
    for error in result["errors"]:
        package, layer = NEEDS_ANOTHER_LAYER.get(error["module"], (None, None))
        if package and error["error"] == f"ModuleNotFoundError: No module named '{package}'":
            report.say(f"  {error['module']} needs {package}, which {layer} brings: not imported here")
            continue
        report.fail(f"{what}: importing {error['module']} failed: {error['error']}")
        report.say("\n".join("       " + line for line in error["traceback"].strip().splitlines()[-12:]))
    for entry in result["unavailable"]:
        report.fail(f"{what}: {entry['module']} is compiled in the build and has no stand-in on this machine")
    for name in result["origins"]["elsewhere"]:
        report.fail(f"{what}: {name} came from neither the build nor the standard library")
    for name in result["blocked"]:
        report.say(f"  note: {name} was imported and refused: the target Python has no such module")
    origins = result["origins"]
    report.say(
        f"  {len(origins['build'])} modules from the build, {len(origins['stdlib'])} from the standard library"
        + (f", from the Lambda runtime: {', '.join(result['runtime_provided'])}" if result["runtime_provided"] else "")
    )
    for entry in result["substituted"]:
        build_file = Path(entry["build_files"][0])
        dist = owner(build_file, dists)
        host_version = _host_version(dist.name) if dist else None
        version_note = ""
        if dist and host_version and host_version != dist.version:
            version_note = f" (VERSION DIFFERS: host has {host_version})"
        report.say(
            f"  compiled, stood in by the host's copy: {entry['module']} "
            f"[build: {build_file.name}{', ' + dist.label if dist else ''}]{version_note}"
        )


def _host_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_build(build_dir: Path, source_template: Path, *, host: Sequence[str] | None = None) -> Report:
    """Everything the module docstring lists; ``host`` overrides where compiled stand-ins come from."""
    report = Report()
    report.say(f"checking {build_dir} against {source_template} on CPython {sys.version.split()[0]} {sys.platform}")
    specs = {spec.logical_id: spec for spec in functions(load_template(source_template))}
    built = built_functions(build_dir, source_template)
    layers: dict[str, tuple[Path, Path, Target]] = {}
    for function in built:
        for logical_id, content, source in function.layers:
            layers.setdefault(logical_id, (content, source, function.target))

    layer_sizes: dict[str, int] = {}
    layer_dists: dict[str, list[Distribution]] = {}
    for logical_id, (content, source, target) in layers.items():
        report.say(f"{logical_id} (layer, {content}):")
        if not content.is_dir():
            report.fail(f"{logical_id}: not built ({content} missing)")
            continue
        scan = scan_artifact(content, target)
        layer_sizes[logical_id] = scan.size
        python_dir = content / "python"
        layer_dists[logical_id] = distributions(python_dir) if python_dir.is_dir() else []
        report.say(
            f"  unpacked size {_megabytes(scan.size)} ({scan.size} bytes, {scan.files} files); "
            f"{len(layer_dists[logical_id])} distributions"
        )
        report.say(
            f"  {len(scan.extension_modules)} extension modules and {len(scan.shared_libraries)} shared libraries, "
            f"all checked for {target}"
        )
        for problem in scan.problems:
            report.fail(f"{logical_id}: {problem}")
        if scan.without_bytecode:
            report.fail(
                f"{logical_id}: {len(scan.without_bytecode)} of {scan.modules} modules have no {target.bytecode_tag} "
                f"bytecode and would be compiled at every cold start (e.g. {scan.without_bytecode[0]})"
            )
        else:
            report.say(f"  {scan.modules} modules, each with its {target.bytecode_tag} bytecode")
        packages = first_party_packages(python_dir) if python_dir.is_dir() else []
        for package in packages:
            stale = stale_files(source / package, python_dir / package) if (source / package).is_dir() else []
            if stale:
                report.fail(f"{logical_id}: {package} differs from the source ({', '.join(stale[:5])}): stale build")
        if packages:
            result = run_probe([python_dir], walk=packages, target=target, host=host)
            report.say(f"  imported every module of {', '.join(packages)}: {len(result['imported'])} modules")
            _probe_findings(report, logical_id, result, layer_dists[logical_id])

    for function in built:
        report.say(f"{function.logical_id} ({function.handler}, {function.code_dir}):")
        if not function.code_dir.is_dir():
            report.fail(f"{function.logical_id}: not built ({function.code_dir} missing)")
            continue
        scan = scan_artifact(function.code_dir, function.target)
        for problem in scan.problems:
            report.fail(f"{function.logical_id}: {problem}")
        stale = stale_files(function.source_dir, function.code_dir)
        if stale:
            report.fail(f"{function.logical_id}: differs from {function.source_dir} ({', '.join(stale)}): stale build")
        total = scan.size + sum(layer_sizes.get(logical_id, 0) for logical_id, _, _ in function.layers)
        report.say(
            f"  code {_megabytes(scan.size)}; with its layers {_megabytes(total)} unzipped (Lambda allows 262.1 MB)"
        )
        if total > UNZIPPED_LIMIT_BYTES:
            report.fail(f"{function.logical_id}: {total} bytes unzipped with its layers, over Lambda's limit")
        result = run_probe(
            function.python_paths(),
            handlers=[(function.module, function.attribute)],
            target=function.target,
            environment=probe_environment(specs[function.logical_id].environment),
            host=host,
        )
        dists = [dist for logical_id, _, _ in function.layers for dist in layer_dists.get(logical_id, [])]
        if not result["errors"]:
            report.say(f"  {function.module}.{function.attribute} imported from the build")
        _probe_findings(report, function.logical_id, result, dists)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avatar_local.deploy_checks.build_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("build_dir", nargs="?", type=Path, default=ROOT / ".aws-sam" / "build")
    parser.add_argument("--template", type=Path, default=ROOT / "template.yaml")
    args = parser.parse_args(argv)
    try:
        report = check_build(args.build_dir.resolve(), args.template.resolve())
    except BuildCheckError as error:
        print(f"build check: {error}", file=sys.stderr)
        return 1
    print("\n".join(report.lines))
    if report.failures:
        print(f"\nbuild check FAILED ({len(report.failures)}):", file=sys.stderr)
        for failure in report.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print("\nbuild check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
