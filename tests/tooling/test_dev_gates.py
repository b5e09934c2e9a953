"""The gates that keep the code as it is: what CI runs on the code, and the pre-commit hooks that run it first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def ci_steps() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make ")]


def hook_entries() -> dict[str, str]:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    return {hook["id"]: hook["entry"] for repo in config["repos"] for hook in repo["hooks"]}


def test_ci_lints_and_type_checks_the_code() -> None:
    # Given the CI script, then it runs the linters (ruff with the complexity limit, cfn-lint, checkov) and mypy
    assert {"make test", "make lint", "make typecheck"} <= set(ci_steps())


def test_the_pre_commit_hooks_run_the_code_checks_ci_runs() -> None:
    # Given the pre-commit configuration, then its hooks are the code checks of `make lint` and `make typecheck`
    assert hook_entries() == {
        "ruff-check": ".venv/bin/ruff check",
        "ruff-format": ".venv/bin/ruff format --check",
        "typecheck": "make typecheck",
        "cfn-lint": "make cfn-lint",
    }
    makefile = (ROOT / "Makefile").read_text()
    assert "\t$(BIN)/ruff check .\n\t$(BIN)/ruff format --check .\n" in makefile


def test_a_function_over_the_complexity_limit_fails_the_lint(tmp_path: Path) -> None:
    # Given a layer module with a function of eleven branches, checked with the project's ruff settings
    module = tmp_path / "layers" / "shared" / "avatar_pipeline" / "branchy.py"
    module.parent.mkdir(parents=True)
    body = "".join(f"    if x == {n}:\n        return {n}\n" for n in range(11))
    module.write_text(f"def branchy(x: int) -> int:\n{body}    return -1\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    # When ruff checks it
    result = subprocess.run(  # noqa: S603 - the project's own ruff, on a file this test wrote
        [str(Path(sys.executable).parent / "ruff"), "check", "--no-cache", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    # Then the lint fails on the function's complexity
    assert result.returncode == 1
    assert "C901 `branchy` is too complex (12 > 10)" in result.stdout


def test_every_test_tier_has_a_make_target_and_make_test_runs_them_all() -> None:
    # Given the folders of tests (each with test modules of its own) and the Makefile
    tiers = sorted(path.name for path in (ROOT / "tests").iterdir() if any(path.glob("test_*.py")))
    makefile = (ROOT / "Makefile").read_text()
    # Then each tier has a target running it, and `make test` runs pytest over the whole of tests/
    assert tiers == ["chaos", "e2e", "handlers", "template", "tooling", "unit"]
    for tier in tiers:
        assert f"\ntest-{tier}: setup\n\t$(BIN)/pytest tests/{tier}\n" in makefile
    assert "\ntest: setup\n\t$(BIN)/pytest\n" in makefile
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]


def test_the_unit_tiers_fixtures_load_none_of_the_local_twin() -> None:
    # Given a fresh interpreter with the tests' path
    code = (
        "import importlib.util, json, sys\n"
        "for path in sys.argv[1:]:\n"
        "    spec = importlib.util.spec_from_file_location(path.replace('/', '_'), path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(json.dumps(sorted(name for name in sys.modules if name.startswith('avatar_local.twin'))))\n"
    )
    # When tests/unit's conftest chain is loaded, as pytest loads it for `make test-unit`
    result = subprocess.run(  # noqa: S603 - our own interpreter, on the project's conftest files
        [sys.executable, "-c", code, "tests/conftest.py", "tests/unit/conftest.py"],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("tests", "local", "layers/shared", "cli")),
        },
        capture_output=True,
        text=True,
        check=True,
    )
    # Then no module of the twin was imported (its moto patches are the handler tier's, through support.moto_stack)
    assert json.loads(result.stdout) == []
