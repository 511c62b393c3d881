"""Demonstration sets: the shipped ones parse; a file that does not parse into dialogues is refused, naming the file
and line; the dialogue format reads back as the prompt the RM and SFT see."""

from __future__ import annotations

from pathlib import Path

import pytest

from alma_ray.config import load_config
from alma_ray.demonstrations import (
    DIALOGUE_TEMPLATE,
    DemonstrationError,
    as_prompt,
    check_shots,
    load_demonstrations,
    render,
)

REPO = Path(__file__).resolve().parent.parent


def test_shipped_sets_parse() -> None:
    hhh, faithful = load_demonstrations("embedded:hhh"), load_demonstrations("embedded:faithful")
    assert len(hhh) == 8 and len(faithful) == 3
    assert sum(len(render(d)) for d in faithful) / 3 > 2 * sum(len(render(d)) for d in hhh) / 8


@pytest.mark.parametrize("line, problem", [
    ('{"dialogue": []}', "non-empty list"),
    ('{"dialogue": [{"role": "assistant", "text": "hi"}]}', "role 'human'"),
    ('{"dialogue": [{"role": "human", "text": "hi"}]}', "ends on a human turn"),
    ('{"dialogue": [{"role": "human", "text": "hi"}, {"role": "assistant", "text": " "}]}', "non-empty 'text'"),
    ('not json', "not valid JSON"),
])
def test_bad_files_name_the_line(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "demos.jsonl"
    path.write_text('{"dialogue": [{"role": "human", "text": "a"}, {"role": "assistant", "text": "b"}]}\n' + line)
    with pytest.raises(DemonstrationError, match=f"{path}:2.*{problem}"):
        load_demonstrations(str(path))


def test_more_shots_than_dialogues_is_refused() -> None:
    config = load_config(REPO / "jobs/configs/almost-tiny.yaml",
                         ["responses.grid=[{name: a, shots: 4, demos: faithful}, {name: b, shots: 1}]",
                          "responses.rubric=[a, b]"])
    with pytest.raises(DemonstrationError, match="shots=4.*holds 3"):
        check_shots(config)


def test_dialogue_reads_back_under_the_template() -> None:
    turns = [{"role": "human", "text": "Hi"}, {"role": "assistant", "text": "Hello."}, {"role": "human", "text": "Bye"}]
    assert DIALOGUE_TEMPLATE.format(prompt=as_prompt(turns)) == render(turns) + "\n\nAssistant:"
