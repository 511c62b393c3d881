"""Resource planning as a pure function: config -> the actors each stage starts and what each reserves.

The plan is printed at start and unit-tested; stages build exactly what it says. Stages run one after another,
so the cluster must fit the largest stage, not the sum.
"""

from __future__ import annotations

from dataclasses import dataclass

from alma_ray.config import Config


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


@dataclass(frozen=True)
class Plan:
    pools: tuple[Pool, ...]
    data_cpus: float
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
        lines = ["placement plan (stages run one after another):"]
        for p in self.pools:
            res = f"{p.cpus_per_actor:g} CPU" + (f" + {p.gpus_per_actor:g} GPU" if p.gpus_per_actor else "")
            lines.append(f"  {p.stage:<10} {p.name:<22} {p.actors} x ({res})")
        lines.append(f"  + {self.data_cpus:g} CPU for Ray Data tasks; largest stage needs "
                     f"{self.cpus_needed:g} CPU, {self.gpus_needed:g} GPU")
        return "\n".join(lines)


def plan_resources(config: Config) -> Plan:
    res, tp = config.resources, config.engine.tensor_parallel_size
    gpus = float(tp) if res.use_gpu else 0.0
    engine_cpus = 1.0 if res.use_gpu else res.cpus_per_engine
    pools = [Pool("synthesis", "base", res.engines_per_checkpoint, engine_cpus, gpus),
             Pool("embeddings", "base-embedder", res.engines_per_checkpoint, engine_cpus, 1.0 if res.use_gpu else 0.0)]
    pools += [Pool("generate", f"checkpoint:{c.name}", res.engines_per_checkpoint, engine_cpus, gpus)
              for c in config.generation.checkpoints]
    pools += [Pool("judge", f"serve-judge:{m.name}", res.judge_engines, engine_cpus, gpus)
              for m in config.judge.members]
    pools.append(Pool("train", "sft-worker", res.train_workers, 1.0 if res.use_gpu else res.cpus_per_train_worker,
                      1.0 if res.use_gpu else 0.0))
    pools.append(Pool("probe", "sft-checkpoint", 1, engine_cpus, gpus))
    return Plan(tuple(pools), data_cpus=1.0)
