"""Resource planning as pure data: the actors each stage starts, what each reserves and how long it lives, and
the stages in order.

A recipe's ``plan(config)`` builds a ``Plan`` from its config (``alma_ray.recipes``); it is printed at start and
unit-tested, and stages build exactly what it says. Stages run one after another; engines that serve several
stages stay up between them (``lifetime``), so the cluster must fit the largest stage plus the engines kept up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alma_ray.config import EngineConfig, ResourcesConfig, TrainConfig

GiB = 1 << 30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Pool:
    stage: str
    """The first stage that uses it."""
    name: str
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    lifetime: str = ""
    """Empty: the stage's own actors, gone when it ends. Else which stages share it (e.g. "every round"): a
    long-lived engine, kept up between them (on GPU it gives its devices back before each training stage)."""

    @property
    def cpus(self) -> float:
        return self.actors * self.cpus_per_actor

    @property
    def gpus(self) -> float:
        return self.actors * self.gpus_per_actor


def engine_pool(stage: str, name: str, actors: int, *, engine: EngineConfig, resources: ResourcesConfig,
                gpus: float | None = None, lifetime: str = "") -> Pool:
    """``actors`` vLLM engine actors: each reserves ``resources.cpus_per_engine`` CPUs on CPU, one CPU and
    ``engine.tensor_parallel_size`` GPUs (or ``gpus``) on GPU."""
    if resources.use_gpu:
        return Pool(stage, name, actors, 1.0, float(engine.tensor_parallel_size if gpus is None else gpus), lifetime)
    return Pool(stage, name, actors, resources.cpus_per_engine, 0.0, lifetime)


def train_pool(stage: str, name: str, resources: ResourcesConfig) -> Pool:
    """The Ray Train worker group (one GPU a worker on GPU); DPO's precomputed reference pass uses as many."""
    if resources.use_gpu:
        return Pool(stage, name, resources.train_workers, 1.0, 1.0)
    return Pool(stage, name, resources.train_workers, resources.cpus_per_train_worker, 0.0)


def _weights(model: str) -> tuple[dict, int, int] | None:
    """(config.json, bytes of the safetensors, bytes a weight takes in them) of a local model folder, else None."""
    folder = Path(model)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = config.get("torch_dtype") or config.get("dtype") or "float32"
    return config, sum(f.stat().st_size for f in folder.glob("*.safetensors")), DTYPE_BYTES.get(str(dtype), 4)


def engine_bytes(model: str, engine: EngineConfig) -> int:
    """Host memory a CPU vLLM engine of ``model`` holds, roughly (0 when it is not a local folder): its weights in
    the engine's dtype, the KV cache (``engine.kv_cache_gb``), 1 GiB for the process (torch, vLLM) and 3.5 copies
    of the vocabulary's embedding matrix (vLLM's CPU backend keeps oneDNN-packed copies of the LM head and buffers
    as wide as the vocabulary). Measured resident (float32, 1 GB of KV cache, after generating; ``max_model_len``
    and ``max_num_seqs`` changed nothing): Gemma-3-270M (a 262k vocabulary) 5.09 GiB, estimated 5.2;
    SmolLM2-135M 2.54 GiB, estimated 2.9; a 1M-parameter model 1.72 GiB, estimated 2.0."""
    found = _weights(model)
    if found is None:
        return 0
    config, size, per_weight = found
    text = config.get("text_config") or config
    in_engine = DTYPE_BYTES.get(engine.dtype, per_weight)
    vocabulary = (int(text.get("vocab_size") or config.get("vocab_size") or 0)
                  * int(text.get("hidden_size") or config.get("hidden_size") or 0) * in_engine)
    return (size * in_engine // per_weight + int(max(1.0, engine.kv_cache_gb) * GiB) + GiB
            + int(3.5 * vocabulary))


def training_bytes(model: str, train: TrainConfig, workers: int, *, sequences: int = 1,
                   logit_positions: int | None = None) -> int:
    """Host memory a training's ``workers`` hold on CPU, roughly, or 0 when ``model`` is not a local folder.

    Per worker: the fp32 weights, their gradients and Adam's two moments (4 x the fp32 weights; ZeRO's shards of
    the moments are left uncounted, to stay on the safe side), the logits of a micro-batch with their log-softmax
    and gradient (3 x micro_batch x ``sequences`` a row (DPO: 2) x positions x vocabulary x 4 bytes, where the
    positions are ``logit_positions`` a sequence reads (the judge: 2) or else every one, max_seq_len), the saved
    activations (32 floats per hidden unit, layer and token of the micro-batch) and 1 GiB for the process (torch,
    DeepSpeed). Measured on Gemma-3-270M (1.07 GB of fp32 weights, a 262k vocabulary, 18 layers of 640):
    micro-batches of 4 x 256 tokens (SFT), 7.2 GB a worker, estimated 10.1 GB; the judge's rating loss on one
    prompt of up to 1,120 tokens a step, 7.1 GB, estimated 8.4 GB (at max_seq_len 2048)."""
    found = _weights(model)
    if found is None:
        return 0
    config, size, per_weight = found
    text = config.get("text_config") or config
    weights = size * 4 // per_weight
    tokens = train.micro_batch * sequences * train.max_seq_len
    positions = train.max_seq_len if logit_positions is None else min(logit_positions, train.max_seq_len)
    logits = 3 * train.micro_batch * sequences * positions * int(text.get("vocab_size") or 0) * 4
    activations = 32 * tokens * int(text.get("num_hidden_layers") or 0) * int(text.get("hidden_size") or 0) * 4
    return workers * (4 * weights + logits + activations + GiB)


@dataclass(frozen=True)
class Plan:
    recipe: str
    pools: tuple[Pool, ...]
    steps: tuple[tuple[str, str], ...]
    """(when, what) lines: the stages in the order they run, e.g. ("round 1", "prompts -> responses -> ...")."""
    data_cpus: float = 1.0
    """CPUs kept free for Ray Data's read/map/write tasks around the actor pools."""

    def stage_needs(self, stage: str) -> tuple[float, float]:
        """(CPUs, GPUs) of the actors ``stage`` itself starts or first builds, and the Ray Data tasks."""
        pools = [p for p in self.pools if p.stage == stage]
        return sum(p.cpus for p in pools) + self.data_cpus, sum(p.gpus for p in pools)

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(p.stage for p in self.pools))

    @property
    def kept_cpus(self) -> float:
        """CPUs the long-lived engines hold while they are up (on CPU they stay up through training)."""
        return sum(p.cpus for p in self.pools if p.lifetime)

    @property
    def cpus_needed(self) -> float:
        """The largest stage, with every long-lived engine up beside it (an upper bound)."""
        return max(self.stage_needs(s)[0] + self.kept_cpus - sum(p.cpus for p in self.pools
                                                                  if p.stage == s and p.lifetime)
                   for s in self.stages)

    @property
    def gpus_needed(self) -> float:
        """The largest stage: on GPU the long-lived engines give their devices back before training."""
        return max(self.stage_needs(s)[1] for s in self.stages)

    def describe(self) -> str:
        lines = [f"{self.recipe} plan:"]
        lines += [f"  {when:<12} {what}" for when, what in self.steps]
        lines.append("placement (stages run one after another; engines kept up are shared by the stages named):")
        for p in self.pools:
            res = f"{p.cpus_per_actor:g} CPU" + (f" + {p.gpus_per_actor:g} GPU" if p.gpus_per_actor else "")
            life = f"kept up: {p.lifetime}" if p.lifetime else "this stage"
            lines.append(f"  {p.stage:<14} {p.name:<40} {p.actors} x ({res})  {life}")
        lines.append(f"  + {self.data_cpus:g} CPU for Ray Data tasks; largest stage needs "
                     f"{self.cpus_needed:g} CPU, {self.gpus_needed:g} GPU")
        return "\n".join(lines)
