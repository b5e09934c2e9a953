"""The gates that keep the code as it is: what CI runs on the code, and the pre-commit hooks that run it first."""

from __future__ import annotations

import subprocess
import sys
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
