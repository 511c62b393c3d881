"""ALMA's sections: the prompt pool (synthesis, dedup, embeddings, clustering), generation and its checkpoint
mix, the judge (and its build), seed SFT, evaluation, and ``AlmaConfig``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from alma_ray.config.base import RuleConfig, RunConfig, Section, TrainConfig

LATEST = "latest"
"""A generation checkpoint whose model is ``latest`` samples the previous round's SFT model (absent in round 1)."""
ROUND_ONE = "round_one:"
"""A generation checkpoint whose model is ``round_one:<k>`` samples round 1's k-th SFT model (seed train.seed + k),
ALMA's M1a (k=0) and M1b (k=1); absent in round 1."""


def names_run_model(model: str) -> bool:
    """True when a checkpoint's ``model`` names a model this run trains (``latest``, ``round_one:<k>``)."""
    return model == LATEST or model.startswith(ROUND_ONE)


class Checkpoint(Section):
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


class DedupConfig(Section):
    """Near-duplicate removal: MinHash over word n-gram shingles, banded LSH (datasketch picks the bands)."""

    threshold: float = Field(default=0.7, gt=0, lt=1)
    """Estimated Jaccard similarity at or above which a prompt is a near-duplicate of an earlier one."""
    num_perm: int = Field(default=128, ge=16, le=1024)
    ngram: int = Field(default=3, ge=1, le=8)
    """Words per shingle; prompts shorter than this are one shingle."""


class EmbeddingConfig(Section):
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


class ClusteringConfig(Section):
    """k-means over the embeddings (faiss); each round draws one unused prompt from each of K clusters."""

    clusters: int | None = Field(default=None, ge=1)
    """K; unset: prompts_per_round (ALMA: 1M clusters, 1M prompts per round)."""
    iterations: int = Field(default=20, ge=1)
    max_points_per_centroid: int = Field(default=256, ge=1)
    """k-means trains on a random sample of at most K * this embeddings; every prompt is then assigned."""
    metric_sample: int = Field(default=512, ge=2)
    """Prompts sampled for the diversity metrics (distinct n-grams, mean pairwise distance)."""


class SynthesisConfig(Section):
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


class GenerationConfig(Section):
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


class JudgeMember(Section):
    """One judge of the ensemble: a model (a fine-tuned checkpoint) and how it reads prompts, or a rule scorer."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str | None = None
    rules: RuleConfig | None = None
    """Score by rules instead of a model (``alma_ray.judge.rules``); exactly one of ``model`` and ``rules``."""
    weight: float = Field(default=1.0, gt=0)
    chat_template: bool | None = None

    @model_validator(mode="after")
    def _model_or_rules(self) -> JudgeMember:
        if (self.model is None) == (self.rules is None):
            raise ValueError(f"judge {self.name}: give exactly one of model (an LLM judge) and rules (a rule "
                             "scorer)")
        return self


class JudgeBuildConfig(Section):
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


class SeedSFTConfig(Section):
    """ALMA's round 1: the base model fine-tuned on a seed SFT set (``train.round_one_seeds`` models, M1a and M1b);
    round 1 samples nothing. Every row keeps its source; the set is D_1 of every later round's training data."""

    sources: list[str] = Field(min_length=1)
    """JSONL/parquet files of ``prompt``/``response`` rows (or chat ``messages``), or embedded:<name>
    (alma_ray.seeds: ``mt-bench-references``, ``tiny-sft``)."""
    skip_bad_lines: bool = False
    in_later_rounds: bool = True
    """Train every later round on the seed set too (D_1 + ... + D_r, as ALMA); False: on D_2 .. D_r only."""


class JudgeConfig(Section):
    """LLM-as-judge giving a real-valued 0-10 score from the score-token probabilities."""

    model: str | None = None
    """The judge's model (a folder, a hub id or embedded:<name>); or give ``rules``."""
    rules: RuleConfig | None = None
    """A rule scorer as the run's judge instead of ``model`` (beyond the paper: ALMA's judge is an LLM)."""
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
    max_length_preference: float | None = Field(default=None, gt=0.5, le=1)
    """The gate's bound on length bias: of the gate pairs the judge orders whose answers differ in length, the
    share where it prefers the longer answer must lie within [1 - this, this], or the run stops (a judge that
    rewards length, or brevity, teaches it); None: measured and reported, not bounded."""
    gate_pairs: list[str] = ["embedded:tiny-preferences"]
    """The gate's preference set: JSONL/parquet ``prompt``/``chosen``/``rejected`` rows, or embedded:<name>
    (alma_ray.judge.preferences)."""

    @property
    def gated(self) -> bool:
        """Whether the gate runs: a bar on accuracy or on length preference is set."""
        return self.min_accuracy is not None or self.max_length_preference is not None

    @property
    def members(self) -> list[JudgeMember]:
        """Every judge of the ensemble, ``model`` first (named ``name``)."""
        main = JudgeMember(name=self.name, model=self.model, rules=self.rules, weight=self.weight,
                           chat_template=self.chat_template)
        return [main, *self.ensemble]

    @model_validator(mode="after")
    def _unique_names(self) -> JudgeConfig:
        if (self.model is None) == (self.rules is None):
            raise ValueError("judge: give exactly one of judge.model (an LLM judge) and judge.rules (a rule scorer)")
        if self.build is not None and self.model is None:
            raise ValueError("judge.build fine-tunes judge.model: give judge.model, or unset judge.build to judge "
                             "by judge.rules")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"judge names must be unique (judge.name names judge.model): {names}")
        return self


class EvalConfig(Section):
    """Every round's model (and the base in round 0) answers the held-out prompts (``synthesis.heldout``); the
    run's judge and ``judges`` score the answers; the round records mean score, win rates and length."""

    judges: list[JudgeMember] = []
    """Evaluation judges besides the run's (one that did not select the data is the honest one)."""
    samples: int = Field(default=0, ge=0)
    """Answers per held-out prompt sampled at the generation's settings (``generation.temperature``, ``top_p``,
    ``max_tokens``; no minimum length) beside the probe's, scored by the run's judge (``eval_sampled``; the
    summary's ``run judge, sampled`` row, its win rates over every pair of answers to a prompt): a model on the edge
    of stopping shows here where a greedy answer says nothing; 0: none."""
    instructions: int = Field(default=0, ge=0, le=58)
    """Verifiable instructions: this many IFBench prompts, held out from everything (never seeds), answered by
    every round's model as the probe answers and scored by IFBench's checkers, strict and loose
    (``alma_ray.judge.ifbench``; 58 of its 64 held-out prompts can be checked offline); 0: not measured."""


class AlmaConfig(RunConfig):
    """ALMA: round 0 builds the prompt pool (and the judge), then ``rounds`` rounds of best-of-N and SFT."""

    DIGEST_EXCLUDE: ClassVar[dict[str, Any]] = {
        **RunConfig.DIGEST_EXCLUDE, "rounds": True,
        "judge": {"http_host": True, "http_port": True, "http_max_body_bytes": True, "http_max_pairs": True,
                  "http_token_env": True, "min_accuracy": True, "max_length_preference": True,
                  "build": {"reuse": True}}}
    """Also out of the digest: ``rounds`` (a run extends: rounds=5 on a 3-round run runs rounds 4 and 5), where
    the judge listens, the gate's threshold (a judge below it can be let through by lowering it) and whether a
    built judge may come from the cache (the cache's key is everything that built it)."""

    recipe: Literal["alma"] = "alma"
    rounds: int = Field(default=1, ge=0)
    """ALMA rounds to run; 0 runs only the round-0 stages (building the judge, when judge.build is set)."""
    prompts_per_round: int = Field(default=16, ge=1)
    selection: Literal["best", "length_controlled"] = "best"
    """How D_r is picked from a prompt's scored responses: the best score (ALMA), or the best score once the judge's
    length bias in the round is taken out (``length_controlled``: the score less the slope of the round's score on
    response length times the response's distance from the mean length, as length-controlled win rates do; beyond
    the paper, against a judge that rewards length or brevity)."""
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
