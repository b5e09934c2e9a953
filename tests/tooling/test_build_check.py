"""avatar_local.deploy_checks.build_check: the check `make check-build` runs on `sam build`'s output, on synthetic
builds."""

from __future__ import annotations

import _statistics
import py_compile
import shutil
import sys
from pathlib import Path

import pytest

from avatar_local.deploy_checks.build_check import (
    BuildCheckError,
    Report,
    Target,
    _probe_findings,
    bytecode_header_problem,
    check_build,
    elf_machine,
    extension_module_tag,
    extension_tag_problem,
    removed_stdlib,
    target_of,
    wheel_tag_fits,
)
from avatar_local.twin.template import functions, load_template

ROOT = Path(__file__).resolve().parents[2]
LAMBDA = Target(python=(3, 13), machine="aarch64", glibc=(2, 34))
AARCH64, X86_64 = 183, 62
CPYTHON_3_12_MAGIC, CPYTHON_3_13_MAGIC = 3531, 3571
TIMESTAMP, UNCHECKED_HASH, CHECKED_HASH = 0b00, 0b01, 0b11


def elf_header(machine: int, elf_class: int = 2) -> bytes:
    """The first bytes of a little-endian ELF shared object for `machine` (enough for the check to read)."""
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    return ident + (3).to_bytes(2, "little") + machine.to_bytes(2, "little") + bytes(44)


def pyc_header(magic: int = CPYTHON_3_13_MAGIC, flags: int = UNCHECKED_HASH) -> bytes:
    """The 16-byte header of a .pyc file: magic number, flags, then source hash (or mtime and size). The check reads
    only the header, and this machine's Python could not run 3.13 bytecode anyway."""
    return magic.to_bytes(2, "little") + b"\r\n" + flags.to_bytes(4, "little") + bytes(8)


# ------------------------------------------------------------------------------------------------ the pieces


def test_no_function_code_directory_has_a_requirements_file() -> None:
    """Dependencies belong to the layer. With a requirements.txt, SAM's Python builder would pip-install it and then
    insist on a python3.13 binary on the build machine; without one it only copies the handler."""
    for spec in functions(load_template(ROOT / "template.yaml")):
        assert not (ROOT / spec.code_uri / "requirements.txt").exists(), spec.logical_id


def test_every_function_of_the_template_targets_python_3_13_on_arm64() -> None:
    specs = functions(load_template(ROOT / "template.yaml"))
    assert specs
    assert {target_of(spec) for spec in specs} == {LAMBDA}


@pytest.mark.parametrize(
    ("tag", "fits"),
    [
        ("cp313-cp313-manylinux_2_28_aarch64", True),
        ("cp313-cp313-manylinux2014_aarch64", True),
        ("cp313-cp313-manylinux_2_17_aarch64", True),
        ("cp39-abi3-manylinux2014_aarch64", True),
        ("py3-none-any", True),
        ("py2.py3-none-any", True),  # a compressed tag set
        ("cp313-cp313-manylinux_2_17_aarch64.manylinux2014_aarch64", True),
        ("cp313-cp313-manylinux_2_17_x86_64.manylinux2014_x86_64", False),
        ("cp313-cp313-manylinux_2_35_aarch64", False),  # newer glibc than Amazon Linux 2023's 2.34
        ("cp313-cp313-manylinux_2_28_x86_64", False),
        ("cp311-cp311-manylinux_2_28_aarch64", False),
        ("cp314-abi3-manylinux_2_28_aarch64", False),
        ("cp313-cp313t-manylinux_2_28_aarch64", False),  # free-threaded build
        ("cp313-cp313-musllinux_1_2_aarch64", False),
        ("cp313-cp313-linux_aarch64", False),  # built locally, not portable
        ("cp313-cp313-macosx_11_0_arm64", False),
    ],
)
def test_wheel_tags_the_lambda_target_accepts(tag: str, fits: bool) -> None:
    assert wheel_tag_fits(tag, LAMBDA) is fits


@pytest.mark.parametrize(
    ("filename", "tag"),
    [
        ("_imaging.cpython-313-aarch64-linux-gnu.so", "cpython-313-aarch64-linux-gnu"),
        ("_rust.abi3.so", "abi3"),
        ("speedups.so", ""),
        ("libjpeg-80045241.so.62.4.0", None),
        ("libXau-7926f62a.so", None),
        ("module.py", None),
    ],
)
def test_extension_module_file_names(filename: str, tag: str | None) -> None:
    assert extension_module_tag(filename) == tag


def test_extension_tags_for_another_python_or_machine_are_problems() -> None:
    assert extension_tag_problem("cpython-313-aarch64-linux-gnu", LAMBDA) is None
    assert extension_tag_problem("abi3", LAMBDA) is None
    problem = extension_tag_problem("cpython-311-x86_64-linux-gnu", LAMBDA)
    assert problem is not None and "CPython 3.11 x86_64" in problem
    assert extension_tag_problem("cpython-313-x86_64-linux-gnu", LAMBDA) is not None
    assert extension_tag_problem("cp313-win_amd64", LAMBDA) is not None


def test_elf_machine_reads_the_header(tmp_path: Path) -> None:
    (tmp_path / "arm").write_bytes(elf_header(AARCH64))
    (tmp_path / "intel").write_bytes(elf_header(X86_64))
    (tmp_path / "arm32").write_bytes(elf_header(40, elf_class=1))
    (tmp_path / "text").write_text("print('hi')\n")
    assert elf_machine(tmp_path / "arm") == "aarch64"
    assert elf_machine(tmp_path / "intel") == "x86_64"
    assert elf_machine(tmp_path / "arm32") == "32-bit machine 40"
    assert elf_machine(tmp_path / "text") is None
    assert elf_machine(Path(_statistics.__file__)) is not None  # this interpreter's own


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (pyc_header(), None),
        (pyc_header(magic=CPYTHON_3_12_MAGIC), "magic number cb0d0d0a, not CPython 3.13's f30d0d0a (3571)"),
        (pyc_header(flags=TIMESTAMP), "flags 00000000: not an unchecked-hash pyc"),
        (pyc_header(flags=CHECKED_HASH), "flags 03000000: not an unchecked-hash pyc"),
        (pyc_header()[:6], "flags 0100: not an unchecked-hash pyc"),
        (b"", "magic number missing"),
    ],
)
def test_bytecode_headers_the_target_uses_as_they_are(tmp_path: Path, header: bytes, problem: str | None) -> None:
    # Given a .pyc file named for CPython 3.13 with this header
    pyc = tmp_path / "module.cpython-313.pyc"
    pyc.write_bytes(header)
    # When its header is checked for the Lambda target, Then it is usable, or the problem says why not
    found = bytecode_header_problem(pyc, LAMBDA)
    assert found is None if problem is None else found is not None and found.startswith(problem), found


def test_bytecode_this_machine_compiles_is_not_for_the_target(tmp_path: Path) -> None:
    # Given an unchecked-hash .pyc compiled by this machine's Python (an older one), misnamed for 3.13
    source = tmp_path / "module.py"
    source.write_text("ANSWER = 42\n")
    pyc = Path(
        py_compile.compile(
            str(source),
            cfile=str(tmp_path / "module.cpython-313.pyc"),
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    )
    # When its header is checked for the Lambda target, Then its magic number gives it away
    problem = bytecode_header_problem(pyc, LAMBDA)
    assert problem is not None and "not CPython 3.13's f30d0d0a" in problem


def test_a_target_without_a_known_magic_number_is_a_problem(tmp_path: Path) -> None:
    pyc = tmp_path / "module.cpython-399.pyc"
    pyc.write_bytes(pyc_header())
    problem = bytecode_header_problem(pyc, Target(python=(3, 99), machine="aarch64", glibc=(2, 34)))
    assert problem == "no magic number known for CPython 3.99: add it to BYTECODE_MAGIC"


def test_modules_removed_between_the_host_and_the_target_python() -> None:
    removed = removed_stdlib((3, 11), (3, 13))
    assert {"imp", "distutils", "cgi", "imghdr", "telnetlib"} <= set(removed)
    assert removed_stdlib((3, 12), (3, 13)) == sorted(removed_stdlib((3, 12), (3, 13)))
    assert "imp" not in removed_stdlib((3, 12), (3, 13))
    assert removed_stdlib((3, 13), (3, 13)) == []


# ------------------------------------------------------------------------------------------------ a whole build

TEMPLATE = """\
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Runtime: python3.13
    Architectures: [arm64]
    Layers:
      - !Ref Shared
    Environment:
      Variables:
        GREETING: hello
Resources:
  Shared:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: {layer}
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: {code}
      Handler: app.lambda_handler
"""

FASTLIB = "from _statistics import _normal_dist_inv_cdf as inv_cdf\n"

HANDLER = """\
import os

import boto3  # the Lambda runtime's
import fastlib
import purelib

GREETING = os.environ["GREETING"]


def lambda_handler(event, context):
    return purelib.answer(), fastlib.inv_cdf, boto3
"""


class Synthetic:
    """A source tree and what `sam build` would make of it: a function, a layer with a pure package and a compiled
    module (a fake aarch64 one in the build; the host's stand-in is a copy of CPython's own _statistics), each of the
    layer's modules with its CPython 3.13 bytecode (a header only)."""

    def __init__(self, root: Path) -> None:
        self.source, self.build, self.host = root / "src", root / "build", root / "host"
        self.code, self.layer = self.build / "Fn", self.build / "Shared" / "python"
        files = {
            self.source / "template.yaml": TEMPLATE.format(layer="layer/", code="fn/"),
            self.source / "fn" / "app.py": HANDLER,
            self.source / "layer" / "purelib" / "__init__.py": "def answer():\n    return 42\n",
            self.source / "layer" / "fastlib" / "__init__.py": FASTLIB,
            self.build / "template.yaml": TEMPLATE.format(layer="Shared", code="Fn"),
        }
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        shutil.copytree(self.source / "fn", self.code)
        shutil.copytree(self.source / "layer", self.layer)
        self.write_so(self.layer / "_statistics.cpython-313-aarch64-linux-gnu.so", AARCH64)
        for module in self.layer.rglob("*.py"):
            self.write_pyc(module)
        self.host.mkdir()
        shutil.copy(_statistics.__file__, self.host)
        self.boto3_host = str(Path(__import__("boto3").__file__).parents[1])

    @staticmethod
    def write_so(path: Path, machine: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(elf_header(machine))

    @staticmethod
    def write_pyc(module: Path, header: bytes = pyc_header()) -> Path:
        pyc = module.parent / "__pycache__" / f"{module.stem}.cpython-313.pyc"
        pyc.parent.mkdir(exist_ok=True)
        pyc.write_bytes(header)
        return pyc

    def check(self) -> tuple[list[str], str]:
        report = check_build(self.build, self.source / "template.yaml", host=[str(self.host), self.boto3_host])
        return report.failures, "\n".join(report.lines)


@pytest.fixture
def synthetic(tmp_path: Path) -> Synthetic:
    return Synthetic(tmp_path)


def test_a_good_build_passes_and_the_report_names_the_stand_ins(synthetic: Synthetic) -> None:
    failures, text = synthetic.check()
    assert failures == [], text
    assert "app.lambda_handler imported from the build" in text
    assert "stood in by the host's copy: _statistics" in text
    assert "from the Lambda runtime: boto3" in text
    assert "unpacked size" in text
    assert "imported every module of fastlib, purelib" in text
    assert "2 modules, each with its cpython-313 bytecode" in text


def test_a_module_missing_from_the_build_fails(synthetic: Synthetic) -> None:
    shutil.rmtree(synthetic.layer / "purelib")
    failures, _ = synthetic.check()
    assert any("importing app failed" in f and "No module named 'purelib'" in f for f in failures), failures


def test_a_module_on_the_host_only_still_fails(synthetic: Synthetic) -> None:
    """pytest and everything else in the development virtualenv are out of reach: only the build counts."""
    for handler in (synthetic.source / "fn" / "app.py", synthetic.code / "app.py"):
        handler.write_text("import pytest\n" + HANDLER)
    failures, _ = synthetic.check()
    assert any("No module named 'pytest'" in f for f in failures), failures


def test_compiled_code_for_another_python_or_machine_fails(synthetic: Synthetic) -> None:
    synthetic.write_so(synthetic.layer / "fastlib" / "_speedups.cpython-311-x86_64-linux-gnu.so", X86_64)
    synthetic.write_so(synthetic.layer / "fastlib.libs" / "libfast-1234.so.1", X86_64)
    failures, _ = synthetic.check()
    assert any("_speedups.cpython-311-x86_64-linux-gnu.so: built for CPython 3.11 x86_64" in f for f in failures)
    assert any("libfast-1234.so.1: ELF for x86_64, not aarch64" in f for f in failures), failures


def test_a_compiled_module_without_a_host_stand_in_fails(synthetic: Synthetic) -> None:
    (synthetic.host / Path(_statistics.__file__).name).unlink()
    failures, _ = synthetic.check()
    assert any("_statistics is compiled in the build and has no stand-in" in f for f in failures), failures


def test_a_distribution_with_a_wheel_for_another_platform_fails(synthetic: Synthetic) -> None:
    info = synthetic.layer / "fastlib-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fastlib\nVersion: 1.0\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nTag: cp313-cp313-manylinux_2_28_x86_64\n")
    (info / "RECORD").write_text("_statistics.cpython-313-aarch64-linux-gnu.so,,\nfastlib/__init__.py,,\n")
    failures, _ = synthetic.check()
    assert any("fastlib 1.0 carries compiled code but its wheel" in f for f in failures), failures


def test_a_standard_library_module_the_target_python_lacks_fails(synthetic: Synthetic) -> None:
    for handler in (synthetic.source / "fn" / "app.py", synthetic.code / "app.py"):
        handler.write_text("import imp\n" + HANDLER)
    failures, _ = synthetic.check()
    assert any("No module named 'imp'" in f for f in failures), failures


def test_a_stale_build_fails(synthetic: Synthetic) -> None:
    (synthetic.source / "fn" / "app.py").write_text(HANDLER + "\n# changed since the build\n")
    (synthetic.source / "layer" / "purelib" / "extra.py").write_text("X = 1\n")
    failures, _ = synthetic.check()
    assert any("Fn: differs from" in f and "app.py" in f for f in failures), failures
    assert any("purelib differs from the source (extra.py)" in f for f in failures), failures


def test_no_build_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BuildCheckError, match="make build"):
        check_build(tmp_path / "nothing", ROOT / "template.yaml")


def test_bytecode_of_another_python_fails_and_the_check_writes_none(synthetic: Synthetic) -> None:
    failures, _ = synthetic.check()
    assert failures == []
    host_bytecode = f"*.{sys.implementation.cache_tag}.pyc"
    assert not list(synthetic.build.rglob(host_bytecode)), "the import probe wrote bytecode into the build"
    cache = synthetic.code / "__pycache__"
    cache.mkdir()
    (cache / "app.cpython-311.pyc").write_bytes(b"")
    (cache / "app.cpython-313.pyc").write_bytes(pyc_header())  # the target's own: fine
    failures, _ = synthetic.check()
    assert failures == [
        "Fn: 1 bytecode files of another Python, dead weight in the artifact (e.g. __pycache__/app.cpython-311.pyc)"
    ]


def test_a_layer_module_without_its_target_bytecode_fails(synthetic: Synthetic) -> None:
    """Lambda's /opt is read-only: a layer module without its 3.13 bytecode is compiled again at every cold start."""
    # Given a layer compiled to CPython 3.13 bytecode
    # When one module's bytecode is missing
    (synthetic.layer / "purelib" / "__pycache__" / "__init__.cpython-313.pyc").unlink()
    failures, _ = synthetic.check()
    # Then the check fails and names it
    assert failures == [
        "Shared: 1 of 2 modules have no cpython-313 bytecode and would be compiled at every cold start "
        "(e.g. python/purelib/__init__.py)"
    ]


def test_a_layer_module_with_only_another_pythons_bytecode_fails(synthetic: Synthetic) -> None:
    # Given a layer whose pure package was compiled by the build machine's Python instead of 3.13
    cache = synthetic.layer / "purelib" / "__pycache__"
    (cache / "__init__.cpython-313.pyc").rename(cache / "__init__.cpython-311.pyc")
    # When the build is checked
    failures, _ = synthetic.check()
    # Then the module counts as without bytecode, and the other Python's file as dead weight
    assert any("1 of 2 modules have no cpython-313 bytecode" in f for f in failures), failures
    assert any("1 bytecode files of another Python" in f for f in failures), failures


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        (pyc_header(magic=CPYTHON_3_12_MAGIC), "magic number cb0d0d0a, not CPython 3.13's f30d0d0a (3571)"),
        (pyc_header(flags=TIMESTAMP), "flags 00000000: not an unchecked-hash pyc, so the source is checked at import"),
    ],
)
def test_target_bytecode_the_target_would_not_use_fails(synthetic: Synthetic, header: bytes, problem: str) -> None:
    # Given a layer compiled to CPython 3.13 bytecode
    # When one module's cpython-313 file has another release's magic number, or is a timestamp pyc
    synthetic.write_pyc(synthetic.layer / "fastlib" / "__init__.py", header)
    failures, _ = synthetic.check()
    # Then the check fails, naming the file and why
    assert failures == [
        f"Shared: 1 cpython-313 bytecode files CPython 3.13 aarch64 (glibc 2.34) would not use as they are "
        f"(e.g. python/fastlib/__pycache__/__init__.cpython-313.pyc: {problem})"
    ]


@pytest.mark.parametrize(
    ("module", "error", "fails"),
    [
        ("avatar_pipeline.adapters.otel_spans", "ModuleNotFoundError: No module named 'opentelemetry'", False),
        ("avatar_pipeline.adapters.otel_spans", "ModuleNotFoundError: No module named 'httpx'", True),
        ("avatar_pipeline.adapters.otel_spans", "SyntaxError: invalid syntax", True),
        ("avatar_pipeline.adapters.s3", "ModuleNotFoundError: No module named 'opentelemetry'", True),
    ],
    ids=["otel-spans-without-the-adot-layer", "otel-spans-missing-else", "otel-spans-broken", "another-module"],
)
def test_only_a_module_meant_for_the_adot_layer_may_miss_what_that_layer_brings(
    module: str, error: str, fails: bool
) -> None:
    # Given the layer's probe could not import a module
    report = Report()
    result = {
        "errors": [{"module": module, "error": error, "traceback": ""}],
        "unavailable": [],
        "origins": {"elsewhere": [], "build": [], "stdlib": []},
        "blocked": [],
        "runtime_provided": [],
        "substituted": [],
    }
    # When its findings are reported
    _probe_findings(report, "SharedLayer", result, [])
    # Then only otel_spans without opentelemetry (AWS's OpenTelemetry layer brings it) is not a failure
    assert bool(report.failures) is fails
