from pathlib import Path

import pytest

from alma_ray.config import ConfigError, load_config, parse_override

PRESETS = sorted((Path(__file__).parent.parent / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_shipped_preset_loads(preset: Path) -> None:
    config = load_config(preset)
    assert config.base_model
    if config.recipe == "alma":
        assert config.generation.checkpoints and config.judge.model
    else:
        assert config.responses.grid and config.player.name in config.responses.tiers[0]


def test_overrides_are_typed_and_nested() -> None:
    config = load_config(PRESETS[0], ["generation.n=7", "train.zero_stage=3", "synthesis.seeds=[a.jsonl]"])
    assert config.generation.n == 7 and config.train.zero_stage == 3
    assert config.synthesis.seeds == ["a.jsonl"]


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'generation.nn'"):
        load_config(PRESETS[0], ["generation.nn=3"])


def test_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'train.zero_stage' = 5"):
        load_config(PRESETS[0], ["train.zero_stage=5"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: x\n")
    with pytest.raises(ConfigError, match="missing key 'base_model'"):
        load_config(missing)


def test_override_needs_equals() -> None:
    with pytest.raises(ConfigError, match="not key=value"):
        parse_override("generation.n")


def test_digest_holds_exactly_what_shapes_the_data() -> None:
    a = load_config(PRESETS[0])
    w = a.resources.train_workers
    b = load_config(PRESETS[0], ["output_dir=/elsewhere", "rounds=7", "judge.http_port=9123", "part_rows=5",
                                 "resources.engines_per_checkpoint=3", "resources.judge_engines=2",
                                 "resources.cpus_per_engine=2", "judge.http_max_pairs=8"])
    assert a.digest() == b.digest()
    # train_workers counts through the global batch (micro_batch x grad_accum x train_workers) it makes
    assert load_config(PRESETS[0], [f"resources.train_workers={2 * w}"]).digest() != a.digest()
    c = load_config(PRESETS[0], ["generation.n=9"])
    assert a.digest() != c.digest()
    # Spelling out a default is the same run; so is a config written before a setting existed.
    assert load_config(PRESETS[0], ["train.checkpoint_every=0", "generation.too_long=skip"]).digest() == a.digest()


def test_fewer_clusters_than_prompts_per_round_is_refused() -> None:
    tiny = Path(__file__).parent.parent / "jobs" / "configs" / "tiny.yaml"
    assert load_config(tiny).clusters == 12
    assert load_config(tiny, ["synthesis.clustering.clusters=null"]).clusters == 8  # default: prompts_per_round
    with pytest.raises(ConfigError, match="clusters=4 is below prompts_per_round=8"):
        load_config(tiny, ["synthesis.clustering.clusters=4"])


def test_a_key_given_twice_and_a_name_outside_output_dir_are_refused(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text(PRESETS[0].read_text() + "\nseed: 3\nseed: 4\n")
    with pytest.raises(ConfigError, match="key 'seed' is given twice"):
        load_config(twice)
    for name in ("..", "."):
        with pytest.raises(ConfigError, match="'name'"):
            load_config(PRESETS[0], [f"name='{name}'"])
    assert load_config(PRESETS[0], ["name=run.v2"]).name == "run.v2"


@pytest.mark.parametrize("override, message", [
    ("responses.rubric=[faithful3, hhh3, nope]", "rubric names 'nope', which is not in responses.grid"),
    ("responses.rubric=[faithful3, hhh3]", r"entries \['hhh1'\] are not in responses.rubric"),
    ("responses.rubric=[[faithful3, hhh3, hhh1]]", "at least 2 items|one tier"),
    ("selfplay.k=1", "'selfplay.k' = 1"),
    ("selfplay.turns=9", "'selfplay.turns' = 9"),
    ("selfplay.config=nope", "selfplay.config 'nope' is not in responses.grid"),
    ("responses.grid=[{name: faithful3, demos: nope}, {name: hhh3}, {name: hhh1}]",
     "demos 'nope' is not a key of demonstrations"),
    ("responses.rules=[empty, rhymes]", r"unknown \['rhymes'\]"),
])
def test_almost_grid_rubric_and_ranges_are_checked(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(PRESETS[0].parent / "almost-tiny.yaml", [override])
