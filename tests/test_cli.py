"""The CLI as a user meets it: --help explains itself, every user error is one clean line and exit code 2,
``config show`` prints the plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alma_ray.cli import main

TINY = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "tiny.yaml"


def test_help_explains_every_command_and_option() -> None:
    """Every command and every option of every command says what it is for (a help text), and ``--help`` prints
    it: the top level lists each command with its line."""
    import argparse

    from alma_ray.cli import _parser

    def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    assert helps.get(name), f"command {' '.join((*path, name))} has no help text"
                    found += [(*path, name), *commands(sub, (*path, name))]
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"option {action.dest} of {' '.join(path) or 'alma-ray'} has no help text"
        return found

    found = commands(_parser())
    assert {c[0] for c in found} == {"run", "report", "config", "models"}
    out = subprocess.run([sys.executable, "-m", "alma_ray.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("run", "report", "config", "models"):
        line = next(line for line in out.splitlines() if line.strip().startswith(command + " "))
        assert len(line.split(None, 1)[1]) > 10, line  # the command with its help line


@pytest.mark.parametrize("args, message", [
    (["run", "--config", "nope.yaml"], "config file not found: nope.yaml"),
    (["config", "show", "--config", str(TINY), "generation.n=0"], "'generation.n' = 0"),
    (["config", "show", "--config", str(TINY), "recipe=other"], "'recipe' = 'other': choose one of ['alma', 'almost']"),
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


def test_the_gpu_preset_shows_almas_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--config", str(TINY.parent / "alma-8b.yaml")]) == 0
    out = capsys.readouterr().out
    assert "prompts_per_round: 50000" in out and "rounds: 10" in out and "Meta-Llama-3-8B\n" in out
    assert "round 1      seed_sft -> sft (x2 seeds: M1a, M1b)" in out
    assert "round 2      prompts -> responses [m1a x100, m1b x100]" in out
    assert "rounds 3-10  prompts -> responses [m1a x67, m1b x67, latest x66]" in out
    assert "judge_gate: real-valued accuracy >= 0.65" in out


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    """(overrides, what the message must say) for each kind of bad input file."""
    seeds = tmp / "seeds.jsonl"
    seeds.write_text('{"prompt": "a fine seed"}\n{"prompt": \n')
    latin = tmp / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "caf\xe9"}\n')
    empty = tmp / "empty.jsonl"
    empty.write_text("")
    broken = tmp / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    nan = tmp / "nan.jsonl"
    nan.write_text('{"prompt": "p", "response": "r", "score": 3}\n{"prompt": "p", "response": "s", "score": NaN}\n')
    empty_notes = tmp / "notes.jsonl"
    empty_notes.write_text("\n")
    build = "judge.build.annotations="
    return [
        ([f"synthesis.seeds=[{seeds}]"], f"{seeds}:2: not valid JSON"),
        ([f"synthesis.seeds=[{latin}]"], f"{latin}:1: not valid UTF-8"),
        ([f"synthesis.seeds=[{empty}]"], "no usable seed prompts"),
        ([f"synthesis.seeds=[{broken}]"], f"{broken}: not a readable parquet file"),
        ([f"{build}{nan}"], f"{nan}:2: 'score' must be an integer 0..10, got nan"),
        ([f"{build}{empty_notes}"], f"{empty_notes}: no annotation rows"),
        ([f"{build}{tmp / 'missing.jsonl'}"], "annotation file not found"),
        (["name=.."], "is not a run directory under output_dir"),
    ]


def test_bad_input_files_stop_the_run_before_ray_starts_and_claim_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for overrides, message in _bad_inputs(tmp_path):
        out = tmp_path / "runs"
        code = main(["run", "--config", str(TINY), f"output_dir={out}", *overrides])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, (overrides, err)
        assert not list(out.glob("*/config.hash")), overrides  # the corrected rerun is not "a different config"
    # a run may extend, never shrink
    (out / "tiny" / "round_002" / "prompts").mkdir(parents=True)
    (out / "tiny" / "round_002" / "prompts" / "_MANIFEST.json").write_text("{}")
    assert main(["run", "--config", str(TINY), f"output_dir={out}", "rounds=1"]) == 2
    assert "already holds 2 rounds and rounds=1" in capsys.readouterr().err
