"""ALMoST's sections: prompt mining, the grid of vanilla configurations and its rubric (the prior), the reward
model, RM-guided self-play, evaluation, and ``AlmostConfig``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from alma_ray.config.base import RunConfig, Section, TrainConfig

BASE = "base"
"""A grid entry whose model is ``base`` samples the run's ``base_model``."""


class MiningConfig(Section):
    """ALMoST's prompt mining: each request shows ``shots`` prompts drawn from the seeds and the prompts accepted so
    far (``Query:`` framing); a completion is accepted unless a filter rejects it, ROUGE-L against every seed and
    accepted prompt among them."""

    seeds: list[str] = ["embedded:mt-bench"]
    """Seed prompt sources, as ``synthesis.seeds`` of ALMA (JSONL/parquet with 'prompt', or embedded:<name>)."""
    skip_bad_seed_lines: bool = False
    max_seed_chars: int = Field(default=600, gt=0)
    heldout: int = Field(default=8, ge=0)
    """Seed prompts held out (never shown as examples; a mined prompt near one is rejected): the evaluation's
    prompts."""
    shots: int = Field(default=10, ge=1, le=32)
    num_requests: int = Field(default=64, gt=0)
    wave: int = Field(default=16, ge=1)
    """Requests sampled together; each wave's examples are drawn from the seeds and every prompt accepted in the
    waves before it (ALMoST resamples per call; a wave is the batch that keeps the engines busy)."""
    temperature: float = Field(default=1.2, ge=0)
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_tokens: int = Field(default=64, gt=0)
    min_chars: int = Field(default=30, ge=1)
    max_chars: int = Field(default=250, gt=0)
    rouge_threshold: float = Field(default=0.5, gt=0, le=1)
    """Reject a prompt whose ROUGE-L F against a seed or an accepted prompt is at or above this."""
    keep_cut_off: bool = False
    """Keep completions that reached max_tokens before the model ended its prompt (rejected as ``cut_off``)."""


class GridEntry(Section):
    """One vanilla configuration: a model prompted with the first ``shots`` dialogues of a demonstration set."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = BASE
    """``base`` (the run's base_model) or another model reference."""
    aligned: bool = False
    """Say so when ``model`` is an aligned (instruction-tuned) model: it is then not a vanilla configuration, and
    the run's lineage and report label it."""
    shots: int = Field(default=3, ge=0, le=16)
    demos: str = "hhh"
    """A key of ``demonstrations``."""


RESPONSE_RULES = ("prompt_too_long", "empty", "dialogue_marker", "too_short", "ends_in_question", "ends_in_colon",
                  "starts_with_well", "no_final_punctuation", "does_not_know")
"""ALMoST's rule filter, in the order the rules are checked (``alma_ray.stages.configured``)."""


class ResponsesConfig(Section):
    """One response per prompt from each configuration of the grid, and the rule filter."""

    grid: list[GridEntry] = Field(min_length=2)
    rubric: list[str | list[str]] = Field(min_length=2)
    """The prior: configuration names best first; a list is a tie (its members are never compared)."""
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_tokens: int = Field(default=128, gt=0)
    min_chars: int = Field(default=50, ge=0)
    """The rule filter's ``too_short``."""
    rules: list[str] = list(RESPONSE_RULES)
    """The rules that mark a response bad (all of ALMoST's by default; a preset whose model writes no sentences,
    like the random tiny model, keeps fewer and says so)."""

    @model_validator(mode="after")
    def _known_rules(self) -> ResponsesConfig:
        if unknown := [r for r in self.rules if r not in RESPONSE_RULES]:
            raise ValueError(f"responses.rules: unknown {unknown}; choose from {list(RESPONSE_RULES)}")
        return self

    @property
    def tiers(self) -> list[list[str]]:
        return [[t] if isinstance(t, str) else list(t) for t in self.rubric]


class RewardModelConfig(Section):
    """The reward model: the base model with a scalar head, Bradley-Terry on the comparisons (ALMoST: lr 2e-5,
    weight decay 0.1, one epoch, max length 1024)."""

    heldout: float = Field(default=0.1, ge=0, lt=1)
    """Share of the prompts whose comparisons are held out for the RM's accuracy."""
    epochs: int = Field(default=1, ge=1)
    lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    max_seq_len: int = Field(default=1024, ge=16)
    check_pairs: list[str] = ["embedded:mt-bench-synthetic"]
    """Preference sets the trained RM orders as a second check (alma_ray.judge.preferences; [] skips it)."""
    check_max_pairs: int | None = Field(default=None, ge=1)
    """Check at most this many pairs, a seeded sample of them (None: all)."""


class SelfPlayConfig(Section):
    """RM-guided self-play: per prompt and turn, ``k`` candidate assistant turns from the prompted model; the RM's
    best is kept; the prompted model then writes the user's next turn; up to ``turns`` assistant turns."""

    config: str | None = None
    """The grid entry whose model and demonstrations play (None: the rubric's first)."""
    k: int = Field(default=4, ge=2, le=64)
    turns: int = Field(default=2, ge=1, le=8)
    prompts: int | None = Field(default=None, ge=1)
    """Mined prompts to play (None: all)."""
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_tokens: int = Field(default=128, gt=0)
    user_max_tokens: int = Field(default=64, gt=0)


class AlmostEvalConfig(Section):
    """The base model and the SFT model answer the held-out prompts (``mining.heldout``); the RM scores them."""

    temperature: float = Field(default=0.0, ge=0)
    max_tokens: int = Field(default=128, gt=0)
    min_tokens: int = Field(default=0, ge=0)


class AlmostConfig(RunConfig):
    """ALMoST: mined prompts -> responses of a grid of vanilla configurations -> synthetic comparisons ranked by
    the prior -> reward model -> RM-guided self-play demonstrations -> SFT of the base model -> evaluation."""

    recipe: Literal["almost"] = "almost"
    name: str = Field(default="almost", pattern=r"^[A-Za-z0-9_.-]+$")
    mining: MiningConfig = MiningConfig()
    demonstrations: dict[str, str] = {"hhh": "embedded:hhh", "faithful": "embedded:faithful"}
    """Demonstration sets: name -> JSONL file of dialogues, or embedded:<name> (alma_ray.demonstrations)."""
    responses: ResponsesConfig
    reward: RewardModelConfig = RewardModelConfig()
    selfplay: SelfPlayConfig = SelfPlayConfig()
    eval: AlmostEvalConfig = AlmostEvalConfig()

    @model_validator(mode="after")
    def _grid_and_rubric(self) -> AlmostConfig:
        names = [g.name for g in self.responses.grid]
        if len(set(names)) != len(names):
            raise ValueError(f"responses.grid names must be unique, got {names}")
        ranked = [n for tier in self.responses.tiers for n in tier]
        for n in ranked:
            if n not in names:
                raise ValueError(f"responses.rubric names {n!r}, which is not in responses.grid ({names})")
        if len(set(ranked)) != len(ranked):
            raise ValueError(f"responses.rubric names a configuration twice: {self.responses.rubric}")
        if missing := [n for n in names if n not in ranked]:
            raise ValueError(f"responses.grid entries {missing} are not in responses.rubric: rank them (a list is "
                             "a tie) or remove them")
        if len(self.responses.tiers) < 2:
            raise ValueError("responses.rubric has one tier: the prior must rank at least two configurations apart")
        for g in self.responses.grid:
            if g.demos not in self.demonstrations:
                raise ValueError(f"responses.grid {g.name}: demos {g.demos!r} is not a key of demonstrations "
                                 f"({sorted(self.demonstrations)})")
        if self.selfplay.config is not None and self.selfplay.config not in names:
            raise ValueError(f"selfplay.config {self.selfplay.config!r} is not in responses.grid ({names})")
        return self

    @property
    def player(self) -> GridEntry:
        """The grid entry that self-plays: ``selfplay.config``, else the rubric's first."""
        name = self.selfplay.config or self.responses.tiers[0][0]
        return next(g for g in self.responses.grid if g.name == name)

    def model_of(self, entry: GridEntry) -> str:
        return self.base_model if entry.model == BASE else entry.model

    @property
    def reward_training(self) -> TrainConfig:
        """The reward model's training settings: ``train`` with ``reward``'s epochs, lr, weight decay, length."""
        rm = self.reward
        return TrainConfig.model_validate({**self.train.model_dump(), "epochs": rm.epochs, "lr": rm.lr,
                                           "weight_decay": rm.weight_decay, "max_seq_len": rm.max_seq_len})
