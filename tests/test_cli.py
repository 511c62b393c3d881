"""The CLI as a user meets it: --help explains itself, every user error is one clean line and exit code 2,
``config show`` prints the plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alma_ray.cli import main

TINY = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "tiny.yaml"


def test_help_names_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "alma_ray.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("run", "report", "config", "models"):
        assert command in out


@pytest.mark.parametrize("args, message", [
    (["run", "--config", "nope.yaml"], "config file not found: nope.yaml"),
    (["config", "show", "--config", str(TINY), "generation.n=0"], "'generation.n' = 0"),
    (["config", "show", "--config", str(TINY), "recipe=other"], "'recipe' = 'other': choose one of ['alma']"),
    (["config", "show", "--config", str(TINY), "generation.bogus=1"], "unknown key 'generation.bogus'"),
])
def test_user_errors_print_one_message_and_exit_2(args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("alma-ray: error: ") and message in err and "Traceback" not in err


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_config_show_prints_the_config_and_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--config", str(TINY)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recipe: alma\n") and "alma plan:" in out and "prompts -> responses" in out
