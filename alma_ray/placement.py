"""Resource planning as pure data: the actors each stage starts and what each reserves, and the stages in order.

A recipe's ``plan(config)`` builds a ``Plan`` from its config (``alma_ray.recipes``); it is printed at start and
unit-tested, and stages build exactly what it says. Stages run one after another, so the cluster must fit the
largest stage, not the sum.
"""

from __future__ import annotations

from dataclasses import dataclass

from alma_ray.config import EngineConfig, ResourcesConfig


@dataclass(frozen=True)
class Pool:
    stage: str
    name: str
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float

    @property
    def cpus(self) -> float:
        return self.actors * self.cpus_per_actor

    @property
    def gpus(self) -> float:
        return self.actors * self.gpus_per_actor


def engine_pool(stage: str, name: str, actors: int, *, engine: EngineConfig, resources: ResourcesConfig,
                gpus: float | None = None) -> Pool:
    """``actors`` vLLM engine actors: each reserves ``resources.cpus_per_engine`` CPUs on CPU, one CPU and
    ``engine.tensor_parallel_size`` GPUs (or ``gpus``) on GPU."""
    if resources.use_gpu:
        return Pool(stage, name, actors, 1.0, float(engine.tensor_parallel_size if gpus is None else gpus))
    return Pool(stage, name, actors, resources.cpus_per_engine, 0.0)


def train_pool(stage: str, name: str, resources: ResourcesConfig) -> Pool:
    """The Ray Train worker group (one GPU a worker on GPU); DPO's precomputed reference pass uses as many."""
    if resources.use_gpu:
        return Pool(stage, name, resources.train_workers, 1.0, 1.0)
    return Pool(stage, name, resources.train_workers, resources.cpus_per_train_worker, 0.0)


@dataclass(frozen=True)
class Plan:
    recipe: str
    pools: tuple[Pool, ...]
    steps: tuple[tuple[str, str], ...]
    """(when, what) lines: the stages in the order they run, e.g. ("round 1", "prompts -> responses -> ...")."""
    data_cpus: float = 1.0
    """CPUs kept free for Ray Data's read/map/write tasks around the actor pools."""

    def stage_needs(self, stage: str) -> tuple[float, float]:
        pools = [p for p in self.pools if p.stage == stage]
        return sum(p.cpus for p in pools) + self.data_cpus, sum(p.gpus for p in pools)

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(p.stage for p in self.pools))

    @property
    def cpus_needed(self) -> float:
        return max(self.stage_needs(s)[0] for s in self.stages)

    @property
    def gpus_needed(self) -> float:
        return max(self.stage_needs(s)[1] for s in self.stages)

    def describe(self) -> str:
        lines = [f"{self.recipe} plan:"]
        lines += [f"  {when:<12} {what}" for when, what in self.steps]
        lines.append("placement (stages run one after another):")
        for p in self.pools:
            res = f"{p.cpus_per_actor:g} CPU" + (f" + {p.gpus_per_actor:g} GPU" if p.gpus_per_actor else "")
            lines.append(f"  {p.stage:<14} {p.name:<26} {p.actors} x ({res})")
        lines.append(f"  + {self.data_cpus:g} CPU for Ray Data tasks; largest stage needs "
                     f"{self.cpus_needed:g} CPU, {self.gpus_needed:g} GPU")
        return "\n".join(lines)
