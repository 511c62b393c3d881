"""Typed schemas for a run, one per recipe: defaults live here and nowhere else.

A run is described by a YAML preset (``jobs/configs/*.yaml``) plus ``key=value`` overrides from the command line
(``generation.n=8``, ``train.zero_stage=3``). ``recipe:`` selects the schema (``alma``, the default, or ``almost``);
``RunConfig`` holds the sections every recipe shares (models, engine, resources, train, output) and each recipe's schema
adds its own. Unknown keys and bad values stop the run before any work starts, with a message that names the file and
the key. Stages take the sections they use, never the root.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alma_ray.errors import AlmaError

LATEST = "latest"
"""A generation checkpoint whose model is ``latest`` samples the previous round's SFT model (absent in round 1)."""
ROUND_ONE = "round_one:"
"""A generation checkpoint whose model is ``round_one:<k>`` samples round 1's k-th SFT model (seed train.seed + k),
ALMA's M1a (k=0) and M1b (k=1); absent in round 1."""


def names_run_model(model: str) -> bool:
    """True when a checkpoint's ``model`` names a model this run trains (``latest``, ``round_one:<k>``)."""
    return model == LATEST or model.startswith(ROUND_ONE)


class ConfigError(AlmaError, ValueError):
    """A config that cannot be used; the message says which file/key and what to change."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Checkpoint(_Section):
    """A model that samples responses, with its share of the N samples per prompt."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str
    weight: float = Field(default=1.0, gt=0)
    chat_template: bool | None = None
    """Wrap prompts with the tokenizer's chat template; None: use it when the tokenizer has one."""
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, gt=0)
    stop: list[str] | None = None
    """Sampling settings for this checkpoint only; None: the generation section's value."""
    from_round: int | None = Field(default=None, ge=1)
    """The first round this checkpoint samples (ALMA: the latest model joins M1a and M1b from round 3); None: every
    round in which it has a model."""


class DedupConfig(_Section):
    """Near-duplicate removal: MinHash over word n-gram shingles, banded LSH (datasketch picks the bands)."""

    threshold: float = Field(default=0.7, gt=0, lt=1)
    """Estimated Jaccard similarity at or above which a prompt is a near-duplicate of an earlier one."""
    num_perm: int = Field(default=128, ge=16, le=1024)
    ngram: int = Field(default=3, ge=1, le=8)
    """Words per shingle; prompts shorter than this are one shingle."""


class EmbeddingConfig(_Section):
    """Prompt embeddings from the base model's hidden states (for clustering and diversity metrics)."""

    backend: Literal["vllm", "transformers"] = "vllm"
    """vLLM's pooling runner (default: 2.2x the transformers prompts/s on the laptop base model, the same vectors;
    docs/prompts.md), or the transformers backbone, which can pool any layer."""
    layer: int = -1
    """Hidden-state layer: 0 is the token embeddings, -1 (default) the last layer, after the final norm."""
    pooling: Literal["mean", "last"] = "mean"
    """Mean over the prompt's tokens (default), or the last token's state."""
    max_tokens: int = Field(default=128, ge=8)
    """Prompt tokens embedded (longer prompts are cut)."""
    batch_size: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _layer_needs_transformers(self) -> EmbeddingConfig:
        if self.backend == "vllm" and self.layer != -1:
            raise ValueError(f"synthesis.embedding.layer={self.layer} needs synthesis.embedding.backend="
                             "transformers: vLLM's pooling runner exposes only the last layer")
        return self


class ClusteringConfig(_Section):
    """k-means over the embeddings (faiss); each round draws one unused prompt from each of K clusters."""

    clusters: int | None = Field(default=None, ge=1)
    """K; unset: prompts_per_round (ALMA: 1M clusters, 1M prompts per round)."""
    iterations: int = Field(default=20, ge=1)
    max_points_per_centroid: int = Field(default=256, ge=1)
    """k-means trains on a random sample of at most K * this embeddings; every prompt is then assigned."""
    metric_sample: int = Field(default=512, ge=2)
    """Prompts sampled for the diversity metrics (distinct n-grams, mean pairwise distance)."""


class SynthesisConfig(_Section):
    """The prompt pool (ALMA section 'Prompt synthesis'): few-shot synthesis with the base model, filters,
    dedup, embeddings and k-means, built once in round 0; each round then draws its prompts from it."""

    seeds: list[str] = ["embedded:mt-bench", "embedded:ifbench", "embedded:writingbench"]
    """Seed prompt sources: JSONL/parquet files with a 'prompt' column, or embedded:<name>."""
    skip_bad_seed_lines: bool = False
    max_seed_chars: int = Field(default=600, gt=0)
    heldout: int = Field(default=8, ge=0)
    """Seed prompts held out (never shown as few-shot examples) to probe each round's checkpoint."""
    k_shot: int = Field(default=4, ge=1, le=16)
    """Seed prompts shown per few-shot request (ALMoST: 3-5)."""
    num_requests: int = Field(default=64, gt=0)
    """Few-shot requests, one candidate prompt each: the pool before filters and dedup (ALMA: 100M+)."""
    temperature: float = Field(default=1.2, ge=0)
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_tokens: int = Field(default=64, gt=0)
    min_chars: int = Field(default=12, ge=1)
    max_chars: int = Field(default=1000, gt=0)
    keep_cut_off: bool = False
    """Keep completions that reached max_tokens before the model ended its prompt (cut off mid-sentence);
    by default they are rejected as ``cut_off``."""
    dedup: DedupConfig = DedupConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    clustering: ClusteringConfig = ClusteringConfig()


class GenerationConfig(_Section):
    """Best-of-N sampling: N responses per prompt, split across checkpoints by weight."""

    checkpoints: list[Checkpoint] = Field(min_length=1)
    n: int = Field(default=4, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=128, gt=0)
    stop: list[str] = []
    completion_template: str = "User: {prompt}\nAssistant:"
    """Used for models without a chat template (base models)."""
    too_long: Literal["skip", "truncate"] = "skip"
    """A prompt that leaves no room for max_tokens in the context: 'skip' writes its rows with an empty response
    and finish_reason 'prompt_too_long'; 'truncate' cuts the prompt's tail to fit. Counted in the manifest."""
    probe_temperature: float = Field(default=0.0, ge=0)
    """Sampling temperature of each round's probe answers to the held-out prompts (0: greedy)."""
    probe_min_tokens: int = Field(default=0, ge=0)
    """Tokens each probe answer has before it may end (vLLM's ``min_tokens``); 0: a model may answer nothing (the
    judge flags an empty answer, and the evaluation counts it as unscored)."""

    def sampling(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """The vLLM sampling settings of one checkpoint: its own where set, else this section's."""
        def pick(name: str) -> Any:
            own = getattr(checkpoint, name)
            return getattr(self, name) if own is None else own

        return dict(temperature=pick("temperature"), top_p=pick("top_p"), max_tokens=pick("max_tokens"),
                    stop=pick("stop") or None)

    @model_validator(mode="after")
    def _unique_names(self) -> GenerationConfig:
        names = [c.name for c in self.checkpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"checkpoint names must be unique, got {names}")
        return self


class JudgeMember(_Section):
    """One judge of the ensemble: a model (a fine-tuned checkpoint) and how it reads prompts."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str
    weight: float = Field(default=1.0, gt=0)
    chat_template: bool | None = None


class JudgeBuildConfig(_Section):
    """Build the judge before round 1 (ALMA): fine-tune ``judge.model`` on annotations, self-distill, evaluate."""

    annotations: str = "embedded:mt-bench-synthetic"
    """(prompt, response, score 0..10) rows: a JSONL/parquet file, or the synthetic demo set
    (alma_ray.judge.annotations)."""
    heldout: float = Field(default=0.25, gt=0, lt=1)
    """Share of the annotations' questions held out as preference pairs for the accuracy table."""
    epochs: int = Field(default=2, ge=1)
    lr: float = Field(default=1e-5, gt=0)
    micro_batch: int | None = Field(default=None, ge=1)
    """Rows a judge-training worker steps on at once; None: ``train.micro_batch``. Judge prompts hold the whole
    rubric and answer (up to ``engine.max_model_len`` tokens) unbucketed, so a large micro-batch pads every row to
    the longest and holds its activations: 1 trains without padding in the least memory."""
    distill_pairs: int = Field(default=64, ge=0)
    """M synthetic (prompt, response) pairs (seed prompts, base-model responses) the fine-tuned judge scores and
    then trains on (ALMA: 20k); 0 skips self-distillation."""
    distill_target: Literal["distribution", "rounded"] = "distribution"
    """Self-distillation targets: the judge's full 11-way distribution (soft labels) or its expected score
    rounded to an integer (one-hot)."""
    reuse: bool = True
    """Take a judge built earlier by the same inputs from ``$ALMA_RAY_CACHE/judges`` instead of building it again,
    and file a newly built one there (``alma_ray.judge.cache``: the key digests everything that built it)."""


class SeedSFTConfig(_Section):
    """ALMA's round 1: the base model fine-tuned on a seed SFT set (``train.round_one_seeds`` models, M1a and M1b);
    round 1 samples nothing. Every row keeps its source; the set is D_1 of every later round's training data."""

    sources: list[str] = Field(min_length=1)
    """JSONL/parquet files of ``prompt``/``response`` rows (or chat ``messages``), or embedded:<name>
    (alma_ray.seeds: ``mt-bench-references``, ``tiny-sft``)."""
    skip_bad_lines: bool = False
    in_later_rounds: bool = True
    """Train every later round on the seed set too (D_1 + ... + D_r, as ALMA); False: on D_2 .. D_r only."""


class JudgeConfig(_Section):
    """LLM-as-judge giving a real-valued 0-10 score from the score-token probabilities."""

    model: str
    version: str = "v1"
    """Bump when the judge's weights or prompt change meaningfully; recorded on every scored row."""
    chat_template: bool | None = None
    max_response_chars: int = Field(default=4000, gt=0)
    max_prompt_chars: int = Field(default=4000, gt=0)
    """Prompts are cut to this many characters before the judge tokenizes them (as responses are)."""
    name: str = Field(default="main", pattern=r"^[A-Za-z0-9_.-]+$")
    """The name of ``model`` in the ensemble (``member_scores``)."""
    weight: float = Field(default=1.0, gt=0)
    """This judge's weight in the ensemble's mean."""
    ensemble: list[JudgeMember] = []
    """More judges served beside ``model`` (other checkpoints or prompt settings); the score is the weighted mean."""
    max_batch_size: int = Field(default=64, ge=1)
    """Pairs a Serve replica scores in one vLLM call (requests are batched together up to this)."""
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    http_max_body_bytes: int = Field(default=1 << 20, ge=1024)
    """The HTTP endpoint refuses larger bodies (413)."""
    http_max_pairs: int = Field(default=256, ge=1)
    """... and more (prompt, response) pairs per request (413)."""
    http_token_env: str | None = "ALMA_JUDGE_TOKEN"
    """When this environment variable is set on the driver, the endpoint requires ``Authorization: Bearer
    <its value>`` (401 otherwise); only the token's SHA-256 reaches the app."""
    build: JudgeBuildConfig | None = None
    """Set to fine-tune the judge from ``model`` before round 1 (stages in round_000); unset: use ``model`` as is."""
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
    """The gate: before the judge selects any data, its real-valued pairwise accuracy on ``gate_pairs`` must reach
    this, or the run stops (round_000/judge_gate says what it scored); None: no gate."""
    gate_pairs: list[str] = ["embedded:tiny-preferences"]
    """The gate's preference set: JSONL/parquet ``prompt``/``chosen``/``rejected`` rows, or embedded:<name>
    (alma_ray.judge.preferences)."""

    @property
    def members(self) -> list[JudgeMember]:
        """Every judge of the ensemble, ``model`` first (named ``name``)."""
        main = JudgeMember(name=self.name, model=self.model, weight=self.weight, chat_template=self.chat_template)
        return [main, *self.ensemble]

    @model_validator(mode="after")
    def _unique_names(self) -> JudgeConfig:
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names must be unique (judge.name names judge.model): {names}")
        return self


class TrainConfig(_Section):
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


class EvalConfig(_Section):
    """Every round's model (and the base in round 0) answers the held-out prompts (``synthesis.heldout``); the
    run's judge and ``judges`` score the answers; the round records mean score, win rates and length."""

    judges: list[JudgeMember] = []
    """Evaluation judges besides the run's (one that did not select the data is the honest one)."""


class EngineConfig(_Section):
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


class ResourcesConfig(_Section):
    """What the run may use; the placement plan is derived from this (alma_ray.placement)."""

    use_gpu: bool = False
    engines_per_checkpoint: int = Field(default=1, ge=1)
    judge_engines: int = Field(default=1, ge=1)
    cpus_per_engine: float = Field(default=1.0, gt=0)
    train_workers: int = Field(default=2, ge=1)
    cpus_per_train_worker: float = Field(default=1.0, gt=0)


class RunConfig(_Section):
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


class AlmaConfig(RunConfig):
    """ALMA: round 0 builds the prompt pool (and the judge), then ``rounds`` rounds of best-of-N and SFT."""

    DIGEST_EXCLUDE: ClassVar[dict[str, Any]] = {
        **RunConfig.DIGEST_EXCLUDE, "rounds": True,
        "judge": {"http_host": True, "http_port": True, "http_max_body_bytes": True, "http_max_pairs": True,
                  "http_token_env": True, "min_accuracy": True, "build": {"reuse": True}}}
    """Also out of the digest: ``rounds`` (a run extends: rounds=5 on a 3-round run runs rounds 4 and 5), where
    the judge listens, the gate's threshold (a judge below it can be let through by lowering it) and whether a
    built judge may come from the cache (the cache's key is everything that built it)."""

    recipe: Literal["alma"] = "alma"
    rounds: int = Field(default=1, ge=0)
    """ALMA rounds to run; 0 runs only the round-0 stages (building the judge, when judge.build is set)."""
    prompts_per_round: int = Field(default=16, ge=1)
    synthesis: SynthesisConfig = SynthesisConfig()
    generation: GenerationConfig
    judge: JudgeConfig
    seed_sft: SeedSFTConfig | None = None
    """Set: round 1 is seed SFT (ALMA); unset: round 1 samples from the checkpoints like every other round."""
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _round_one_models_exist(self) -> AlmaConfig:
        last = self.train.round_one_seeds - 1
        for c in self.generation.checkpoints:
            if c.model.startswith(ROUND_ONE) and c.model not in {f"{ROUND_ONE}{k}" for k in range(last + 1)}:
                raise ValueError(f"checkpoint {c.name}: model {c.model!r} names no round-one model; use "
                                 f"{ROUND_ONE}0 .. {ROUND_ONE}{last} (train.round_one_seeds)")
            if c.from_round == 1 and names_run_model(c.model):
                raise ValueError(f"checkpoint {c.name}: from_round=1, but its model {c.model!r} is trained in "
                                 "round 1; give from_round 2 or more")
        first = 2 if self.seed_sft is not None else 1
        for r in range(first, self.rounds + 1):
            if not any(self.samples_in(c, r) for c in self.generation.checkpoints):
                listed = ", ".join(f"{c.name}: model {c.model}, from_round {c.from_round}"
                                   for c in self.generation.checkpoints)
                fix = "round 1 is seed SFT" if first == 2 else "give a checkpoint with a fixed model, or set seed_sft"
                raise ValueError(f"no checkpoint samples in round {r} (its model is trained later, or its "
                                 f"from_round is later): {listed}; {fix}")
        return self

    @model_validator(mode="after")
    def _enough_clusters(self) -> AlmaConfig:
        k = self.synthesis.clustering.clusters
        if k is not None and k < self.prompts_per_round:
            raise ValueError(f"synthesis.clustering.clusters={k} is below prompts_per_round={self.prompts_per_round}: "
                             "each round draws its prompts from that many distinct clusters; raise clusters or "
                             "leave it unset (= prompts_per_round)")
        return self

    def samples_in(self, c: Checkpoint, r: int) -> bool:
        """Whether checkpoint ``c`` samples in round ``r``: it has a model then and its ``from_round`` is reached
        (round 1 samples nothing when it is seed SFT)."""
        if r < (c.from_round or 1) or (r == 1 and self.seed_sft is not None):
            return False
        return r > 1 or not names_run_model(c.model)

    @property
    def clusters(self) -> int:
        """K, the clusters of the prompt pool (each round draws one prompt from each of prompts_per_round)."""
        return self.synthesis.clustering.clusters or self.prompts_per_round

    @property
    def judge_training(self) -> TrainConfig:
        """The judge build's training settings: ``train`` with ``judge.build``'s epochs, lr and micro-batch, the
        whole judge prompt (``engine.max_model_len``) and no length bucketing."""
        build = self.judge.build or JudgeBuildConfig()
        return TrainConfig.model_validate({**self.train.model_dump(), "epochs": build.epochs, "lr": build.lr,
                                           "micro_batch": build.micro_batch or self.train.micro_batch,
                                           "max_seq_len": self.engine.max_model_len, "bucket_window": 1})


BASE = "base"
"""A grid entry whose model is ``base`` samples the run's ``base_model``."""


class MiningConfig(_Section):
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


class GridEntry(_Section):
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


class ResponsesConfig(_Section):
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


class RewardModelConfig(_Section):
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


class SelfPlayConfig(_Section):
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


class AlmostEvalConfig(_Section):
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


SCHEMAS: dict[str, type[RunConfig]] = {"alma": AlmaConfig, "almost": AlmostConfig}
"""``recipe:`` -> its schema (the discriminator of a preset)."""
AnyConfig = AlmaConfig | AlmostConfig
"""Any recipe's config."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)  # type: ignore[no-untyped-call]


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` -> (key.sub, value parsed as YAML, so 3 is an int and [a, b] a list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not key=value (e.g. generation.n=8)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML: {e}") from e
    return key.strip(), value


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if not e["loc"]:  # a check across keys: its message names them
            lines.append(f"  - {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}': remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"  - missing key '{key}': it has no default, set it in the file or as {key}=...")
        else:
            lines.append(f"  - '{key}' = {e.get('input')!r}: {e['msg']}")
    return "\n".join(lines)


def validate_config(tree: dict[str, Any], source: str = "config") -> AnyConfig:
    """The schema ``tree['recipe']`` names (default ``alma``), validated. Raises ConfigError with a fix-it message."""
    recipe = tree.get("recipe", "alma")
    if recipe not in SCHEMAS:
        raise ConfigError(f"invalid config ({source}):\n  - 'recipe' = {recipe!r}: choose one of {sorted(SCHEMAS)}")
    try:
        return SCHEMAS[recipe].model_validate(tree)  # type: ignore[return-value]
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> AnyConfig:
    """Read a YAML preset, apply ``key=value`` overrides, validate. Raises ConfigError with a fix-it message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (presets live in jobs/configs/)")
    try:
        tree = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(tree).__name__}")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, f"override '{text}'")
    return validate_config(tree, str(path) + (f" + overrides {list(overrides)}" if overrides else ""))
