"""What every recipe's config shares: the section base (unknown keys refused, values frozen), the training,
engine and resources sections, and ``RunConfig`` (where a run is written, its base model, and its digests: what
shapes the data and so names a run directory)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from alma_ray.errors import AlmaError


class ConfigError(AlmaError, ValueError):
    """A config that cannot be used; the message says which file/key and what to change."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuleConfig(Section):
    """A rule scorer (``alma_ray.judge.rules``): named, deterministic rules on (prompt, response), served like an LLM
    judge (the run's judge, an ensemble member, an evaluation judge, a reward). Each rule set gives a value in
    [0, 1]; the score is their mean on the judges' 0-10 scale. Rows are labelled ``rules-v<version>(...)``."""

    ifbench: Literal["strict", "loose"] | None = None
    """Verifiable instructions: the fraction of the row's ``instructions`` (IFBench ids and arguments) the
    response follows, by IFBench's own checkers (strict, or its loose variant); a row without instructions is
    flagged, never scored."""
    max_chars: int | None = Field(default=None, ge=1)
    """Short answers: 1 up to this many characters, ``max_chars / length`` above."""
    min_chars: int | None = Field(default=None, ge=1)
    """Long enough answers: 1 from this many characters, ``length / min_chars`` below."""
    contains: str | None = None
    """A regular expression the response must contain (1 or 0)."""
    excludes: str | None = None
    """A regular expression the response must not contain (1 or 0)."""
    ends_sentence: bool = False
    """The response ends a sentence (``.``, ``!`` or ``?``, closing quotes or brackets allowed after it)."""
    invert: bool = False
    """Score ``10 - score``: the same rules, the opposite preference (tests of the loop's direction)."""

    @model_validator(mode="after")
    def _some_rule(self) -> RuleConfig:
        if self.ifbench is None and not self.rules:
            raise ValueError("a rule scorer needs at least one rule: ifbench, max_chars, min_chars, contains, "
                             "excludes or ends_sentence")
        for key in ("contains", "excludes"):
            pattern = getattr(self, key)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"{key}={pattern!r} is not a regular expression: {e}") from None
        return self

    @property
    def rules(self) -> dict[str, Any]:
        """The property rules that are set (ifbench aside), by name."""
        return {k: v for k in ("max_chars", "min_chars", "contains", "excludes", "ends_sentence")
                if (v := getattr(self, k)) not in (None, False)}


class TrainConfig(Section):
    """SFT with Ray Train + DeepSpeed ZeRO; ALMA trains from the base model on D_1..D_r."""

    objective: Literal["sft", "dpo"] = "sft"
    """What rounds r >= 2 train: SFT from the base on D_1..D_r (ALMA), or DPO from round 1's first model (M1a) on
    the preference pairs of rounds 2..r (ALMA's DPO variant); round 1 is always SFT."""
    dpo_rejected: Literal["random", "worst"] = "random"
    """DPO pairs per prompt: the best response against a random other valid one (ALMA's best variant) or the
    worst."""

    init: Literal["base", "latest"] = "base"
    """Each round trains from the base model on D_1..D_r (ALMA), or from the previous round's model ("latest")."""
    round_one_seeds: int = Field(default=2, ge=1)
    """Round 1 trains this many models from the base, seeds train.seed, train.seed+1, ... (ALMA: two, M1a and
    M1b). Later rounds sample them through checkpoints whose model is round_one:<k>."""
    seed: int = 0
    epochs: int = Field(default=1, ge=1)
    lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    micro_batch: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    max_seq_len: int = Field(default=512, ge=16)
    zero_stage: int = Field(default=2, ge=0, le=3)
    offload: bool = False
    """ZeRO-Offload (GPU runs): optimizer state in CPU memory, and parameters too at ZeRO-3."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: fp32 on CPU, bf16 on GPU."""
    bucket_window: int = Field(default=16, ge=1)
    """Length bucketing: sort each window of this many micro-batches by length before cutting it; 1: off."""
    report_every: int = Field(default=10, ge=1)
    checkpoint_every: int = Field(default=0, ge=0)
    """Save a resumable Ray Train checkpoint (DeepSpeed state) every this many steps; 0: only the final model."""
    max_failures: int = Field(default=1, ge=0)
    """Worker-group restarts Ray Train may make; each resumes from the latest checkpoint."""
    dpo_beta: float = Field(default=0.1, gt=0)
    """DPO's beta: how far the policy may move from the frozen reference."""
    dpo_reference: Literal["online", "precomputed"] = "precomputed"
    """DPO's frozen reference log-probs: computed in each training step by a reference model on every worker
    ("online"), or once per run in a Ray Data pass before training ("precomputed"; frees the workers' memory
    of the reference model). docs/training.md has the measurement behind the default."""


class EngineConfig(Section):
    """vLLM engine settings shared by every pool."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """auto: bfloat16 on GPU; on CPU the model's own dtype."""
    max_model_len: int = Field(default=2048, ge=64)
    kv_cache_gb: float = Field(default=1.0, gt=0)
    """KV cache per engine on CPU (VLLM_CPU_KVCACHE_SPACE); on GPU vLLM sizes it itself."""
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    batch_size: int = Field(default=32, ge=1)
    """Prompts per Ray Data batch handed to an engine actor."""


class ResourcesConfig(Section):
    """What the run may use; the placement plan is derived from this (alma_ray.placement)."""

    use_gpu: bool = False
    engines_per_checkpoint: int = Field(default=1, ge=1)
    judge_engines: int = Field(default=1, ge=1)
    cpus_per_engine: float = Field(default=1.0, gt=0)
    train_workers: int = Field(default=2, ge=1)
    cpus_per_train_worker: float = Field(default=1.0, gt=0)


class RunConfig(Section):
    """What every recipe shares: where the run is written, the base model, engines, resources and training."""

    name: str = Field(default="alma", pattern=r"^[A-Za-z0-9_.-]+$")
    """The run directory's name under output_dir: one path segment (not "." or "..")."""
    output_dir: str = "runs"
    seed: int = 0
    base_model: str
    """The pretrained model: it synthesizes prompts and is what training starts from."""
    train: TrainConfig = TrainConfig()
    engine: EngineConfig = EngineConfig()
    resources: ResourcesConfig = ResourcesConfig()
    part_rows: int = Field(default=100_000, ge=1)
    """Rows per part of the long stages (generation, scoring, synthesis): each part is committed as it finishes,
    so a killed stage keeps its finished parts and the rerun does only the rest. It does not change the data."""

    @model_validator(mode="after")
    def _one_segment(self) -> RunConfig:
        if self.name in (".", ".."):
            raise ValueError(f"'name' = {self.name!r} is not a run directory under output_dir: give a name")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    DIGEST_EXCLUDE: ClassVar[dict[str, Any]] = {"output_dir": True, "resources": True, "part_rows": True}
    """What does not shape the data: where it is written, on what resources, in what parts (the effective
    training batch, which the resources do shape, is added back by ``digest``)."""

    def digest(self) -> str:
        """A stable hash of everything that shapes the data (``DIGEST_EXCLUDE`` left out; the global training
        batch, micro_batch x grad_accum x train_workers, put in).

        Only values that differ from the defaults count, so a new release that adds a setting (with a default)
        does not orphan existing run directories."""
        payload = self.model_dump(mode="json", exclude=self.DIGEST_EXCLUDE, exclude_defaults=True)
        payload["global_batch"] = self.train.micro_batch * self.train.grad_accum * self.resources.train_workers
        payload["use_gpu"] = self.resources.use_gpu  # precision and engine dtype follow it
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def digests(self) -> tuple[str, ...]:
        """The digest, then the formula of earlier releases (output_dir and resources left out, all else in),
        under which run directories they wrote are still recognised."""
        legacy = self.model_dump(mode="json", exclude={"output_dir", "resources", "part_rows"}, exclude_defaults=True)
        return self.digest(), hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        tree = self.model_dump(mode="json")
        return yaml.safe_dump({"recipe": tree.pop("recipe", None), **tree}, sort_keys=False)
