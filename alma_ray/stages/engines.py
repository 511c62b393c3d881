"""The run's long-lived engines, shared by its stages through handles (ray-project/ray #52277 asks the same of
ray.data.llm): a pool of ``SamplingEngine`` actors per model folder, and the judge application on Ray Serve per
panel. A stage asks for the engines it needs (``samplers``, ``judge_app``); the first ask builds them, later asks
reuse them. Stages still stream their batches through Ray Data: light tasks hand each batch to an engine.

What stays up is the recipe's call, from its plan: ``keep_only`` gives back the engines no later stage needs (ALMA: the
base model's after round 0, an earlier round's checkpoint once no mix names it), and ``before_training`` gives back
every engine on a GPU cluster, where the devices are needed for training; on CPU the engines stay while the machine has
the CPUs and the memory the training needs beside them (the local Ray instance reserves logical CPUs for them: they take
turns on the same cores, and an idle engine costs memory, not CPU; a 270M model's training workers need about 7 GB each,
``alma_ray.placement.training_bytes``). New sampling engines and judge or reward apps on CPU make room the same way
(``memory_for_engines``, ``memory_for_app``: ``alma_ray.placement.engine_bytes``, engines still loading counted as
loaded), or Ray's memory monitor kills one and Ray restarts it, in a loop. On CPU a sampling engine given back is shut
down but its process kept (``spare``): the next model's pool takes it over and loads the new checkpoint in seconds,
where a new process spends about half a minute importing vLLM (each round's new checkpoint, each probe). ``close`` ends
them all. A dead engine is restarted by Ray and the batch it held retried; every request names the model it needs, so a
restarted or taken-over engine loads the right one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import psutil
import ray
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

from alma_ray.config import EngineConfig, ResourcesConfig, TrainConfig
from alma_ray.engine import actor_remote_args, build_llm, prompt_ids, uses_chat_template
from alma_ray.ids import stable_seed
from alma_ray.judge.serve import APP, ROUTE, Panel, build_app
from alma_ray.placement import GiB, engine_bytes, training_bytes
from alma_ray.reward import RewardServer
from alma_ray.store import text_digest


def judge_app_name(run_dir: Any) -> str:
    """The Serve application name of a run's judge: the run's name and a hash of its directory."""
    return f"{APP}-{run_dir.name}-{text_digest(str(run_dir))[:6]}"

DATA_CPUS = 1.0
"""CPUs a training's Ray Data tasks (reading and tokenizing its examples) need beside its workers."""


def _free_memory(need: int, wait_s: float = 15.0) -> int:
    """The bytes this node's processes can still take before Ray's memory monitor starts killing them (its
    available memory less the monitor's reserve: ``RAY_memory_usage_threshold``, 0.95 of the total by default),
    waiting up to ``wait_s`` for processes just ended to return theirs (a laptop's one node, where the driver runs
    and training will run); the wait ends early once it stops growing (``SETTLE_S``)."""
    threshold = float(os.environ.get("RAY_memory_usage_threshold", 0.95))
    deadline = time.time() + wait_s
    most, grew_at = -float("inf"), time.time()
    while True:
        memory = psutil.virtual_memory()
        free, now = int(memory.available - (1 - threshold) * memory.total), time.time()
        if free > most + 64 * 2**20:
            most, grew_at = free, now
        if free >= need or now > deadline or now - grew_at > SETTLE_S:
            return free
        time.sleep(0.5)


SETTLE_S = 3.0
"""Seconds without 64 MiB more free memory after which the processes just ended have returned theirs."""


def _free_cpus(need: float, wait_s: float = 15.0) -> float:
    """The cluster's free CPUs, waiting up to ``wait_s`` for actors just given back to release theirs."""
    deadline = time.time() + wait_s
    while True:
        free = float(ray.available_resources().get("CPU", 0.0))
        if free >= need or time.time() > deadline:
            return free
        time.sleep(0.5)


ENGINE_ADVICE = ("lower engine.kv_cache_gb or run fewer engines (resources.engines_per_checkpoint, "
                 "resources.judge_engines, the checkpoints in the mix)")
TRAINING_ADVICE = "lower train.micro_batch or train.max_seq_len, or train on fewer resources.train_workers"

TOO_LONG = "prompt_too_long"
"""The finish reason of a prompt that left no room for ``max_tokens`` (``generation.too_long: skip``)."""


@dataclass(frozen=True)
class SampleRequest:
    """What one stage asks of a sampling engine for each of its batches."""

    checkpoint: str
    n: int
    sampling: dict[str, Any]
    chat: bool | None
    completion_template: str
    seed_salt: str
    too_long: str = "skip"
    model: str = ""
    """The folder the engine must hold for this request ("": whatever it holds); an engine holding another loads
    it first (a pool taken over from another model, or an actor Ray restarted with its first model)."""


class SamplingEngine:
    """One vLLM engine for one model, long-lived in its own Ray actor (``alma_ray.stages.engines``): every stage
    that samples this model sends it batches; each input row yields ``n`` output rows.

    Input columns: ``prompt``, ``prompt_id`` and any lineage columns (passed through). Output adds
    ``checkpoint``, ``sample_index``, ``seed``, ``response``, token counts, ``finish_reason``,
    ``cumulative_logprob`` and ``prompt_truncated``. A prompt that leaves no room for ``max_tokens`` is either cut
    to fit (``too_long="truncate"``) or yields ``n`` rows with an empty response and ``finish_reason =
    "prompt_too_long"`` (``"skip"``), so every (prompt, checkpoint, sample index) is accounted for.
    """

    def __init__(self, model: str, *, engine: EngineConfig, use_gpu: bool) -> None:
        self.engine, self.use_gpu = engine, use_gpu
        self.max_model_len = engine.max_model_len
        self.model = ""
        self.llm: Any = None
        self.load(model)

    def load(self, model: str) -> None:
        """Hold ``model`` (an HF folder): the engine it held is shut down first. In a process that has imported
        vLLM once, a new engine for a small model is a few seconds instead of half a minute."""
        if model == self.model:
            return
        started = time.time()
        self.unload()
        self.llm = build_llm(model, self.engine, use_gpu=self.use_gpu)
        self.tokenizer = self.llm.get_tokenizer()
        self.model = model
        self.ready_at, self.build_s = time.time(), time.time() - started
        self.reported: set[str] = set()

    def holds(self) -> str:
        """The model folder this engine holds ("" when shut down)."""
        return self.model

    def unload(self) -> None:
        """Shut the engine down and free its memory (weights, KV cache); the process stays, vLLM imported."""
        if self.llm is None:
            return
        import gc

        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm, self.model = None, ""
        gc.collect()
        cleanup_dist_env_and_memory()

    def _encode(self, prompt: str, request: SampleRequest, chat: bool, limit: int) -> tuple[list[int], bool]:
        """Token ids the engine sees, and whether the prompt was cut to fit the context."""
        def encode(text: str) -> list[int]:
            return prompt_ids(self.tokenizer, text, chat=chat, completion_template=request.completion_template)

        ids = encode(prompt)
        if len(ids) <= limit or request.too_long == "skip":
            return ids, False
        body = self.tokenizer.encode(prompt, add_special_tokens=False)
        keep = len(body) - (len(ids) - limit)
        while keep > 0:  # re-tokenizing the cut text can shift a token or two: shrink until it fits
            ids = encode(self.tokenizer.decode(body[:keep]))
            if len(ids) <= limit:
                return ids, True
            keep -= len(ids) - limit
        return ids, False  # the template alone is too long: counted as skipped

    def sample(self, batch: dict[str, np.ndarray], request: SampleRequest, progress: Any = None
               ) -> dict[str, list[Any]]:
        from vllm import SamplingParams, TokensPrompt

        if request.model:
            self.load(request.model)
        started = time.time()
        if progress is not None and (key := progress._actor_id.hex()) not in self.reported:
            self.reported.add(key)  # each stage's progress bar counts this engine once
            progress.ready.remote(self.ready_at, self.build_s)
        limit = self.max_model_len - request.sampling["max_tokens"]
        if limit < 1:
            raise ValueError(f"max_tokens={request.sampling['max_tokens']} leaves no room for a prompt in "
                             f"engine.max_model_len={self.max_model_len}: raise the one or lower the other")
        chat = uses_chat_template(self.tokenizer, request.chat)
        encoded = [self._encode(p, request, chat, limit) for p in batch["prompt"]]
        seeds = [stable_seed(request.seed_salt, request.checkpoint, pid) for pid in batch["prompt_id"]]
        fits = [i for i, (ids, _) in enumerate(encoded) if len(ids) <= limit]
        outputs = dict(zip(fits, self.llm.generate(
            [TokensPrompt(prompt_token_ids=encoded[i][0]) for i in fits],
            [SamplingParams(n=request.n, seed=seeds[i], logprobs=0, **request.sampling) for i in fits],
            use_tqdm=False,
        )))
        rows: dict[str, list[Any]] = {k: [] for k in [*batch, "checkpoint", "sample_index", "seed", "response",
                                                      "prompt_tokens", "output_tokens", "finish_reason",
                                                      "cumulative_logprob", "prompt_truncated"]}
        for i, (ids, truncated) in enumerate(encoded):
            completions = outputs[i].outputs if i in outputs else [None] * request.n
            for j, c in enumerate(completions):
                for key, column in batch.items():
                    rows[key].append(column[i].item() if hasattr(column[i], "item") else column[i])
                rows["checkpoint"].append(request.checkpoint)
                rows["sample_index"].append(j)
                rows["seed"].append(seeds[i])
                rows["prompt_tokens"].append(len(ids))
                rows["response"].append(c.text.strip() if c else "")
                rows["output_tokens"].append(len(c.token_ids) if c else 0)
                rows["finish_reason"].append(str(c.finish_reason) if c else TOO_LONG)
                rows["cumulative_logprob"].append(float(c.cumulative_logprob or 0.0) if c else 0.0)
                rows["prompt_truncated"].append(truncated)
        if progress is not None:
            progress.add.remote(len(rows["response"]), sum(rows["output_tokens"]), started, time.time())
        return rows


class Engines:
    """The engines one run keeps; ``with Engines(...) as engines:`` ends them when the run ends."""

    def __init__(self, engine: EngineConfig, resources: ResourcesConfig, *, log: Any = None, app: str = APP
                 ) -> None:
        self.engine, self.resources = engine, resources
        self.log = log or (lambda line: None)
        self.app = app
        """The prefix of this run's Serve applications (``judge_app_name``): two runs on one cluster never touch
        each other's judge."""
        self.pools: dict[str, list[Any]] = {}
        self.spare: list[Any] = []
        """Sampling engine actors given back on CPU: their engine shut down, the process kept with vLLM imported.
        The next pool takes them before starting new processes (on GPU an actor given back ends, freeing its
        devices)."""
        self.apps: dict[Panel, str] = {}
        self.rewards: dict[RewardServer, str] = {}
        self.loading: list[tuple[Any, int, Any]] = []
        """(a reference that resolves once the engine holds its model, the bytes it will hold, the actor) of
        sampling engines started or taken over on CPU: an engine loads after ``samplers`` returns, so every check
        counts it as loaded until it has (two engines started back to back once both passed a check that only one
        fitted)."""
        self.names: dict[Panel | RewardServer, str] = {}
        """Each app's name, kept when it is given back and started again (a name counted from the apps up would
        be a live app's name after another was given back, and ``serve.run`` would replace that app)."""

    def __enter__(self) -> Engines:
        self.clean_up_dead_apps()
        return self

    def clean_up_dead_apps(self) -> None:
        """Delete the Serve applications an earlier, killed driver of this run left up (and the devices they
        hold). The run directory's lock says that driver is gone, so every app under this run's prefix is its.
        Engines under the shared default name (benchmarks, tests) clean up nothing."""
        if self.app == APP:
            return
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:
            return  # Serve is not running on this cluster
        for name in list(serve.status().applications):
            if name == self.app or name.startswith(f"{self.app}-"):
                self.log(f"engines: deleting judge app {name}, left up by an earlier driver of this run")
                serve.delete(name)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def samplers(self, model: str, size: int, *, keep: Collection[Panel | RewardServer] = ()) -> list[Any]:
        """``size`` sampling engines of ``model`` (an HF folder), built on the first ask; on CPU, room is never
        made by giving back the apps in ``keep`` (those the same stage calls)."""
        pool = self.pools.setdefault(model, [])
        if len(pool) < size:
            cpu, held = not self.resources.use_gpu, engine_bytes(model, self.engine)
            taken = min(size - len(pool), len(self.spare))
            if cpu:  # a spare taken over holds its process already
                self.memory_for_engines((size - len(pool)) * held - taken * GiB, keep=keep, spares=taken)
            for actor in self.spare[:taken]:
                ready = actor.load.remote(model)
                if cpu and held:
                    self.loading.append((ready, max(0, held - GiB), actor))
            pool += self.spare[:taken]
            del self.spare[:taken]
            actor = ray.remote(SamplingEngine).options(  # type: ignore[attr-defined]
                max_restarts=-1, max_task_retries=-1, max_concurrency=1,
                **actor_remote_args(self.engine, use_gpu=self.resources.use_gpu,
                                    cpus=self.resources.cpus_per_engine))
            new: list[Any] = [actor.remote(model, engine=self.engine, use_gpu=self.resources.use_gpu)
                              for _ in range(size - len(pool))]
            if cpu and held:
                self.loading += [(a.holds.remote(), held, a) for a in new]
            pool += new
            self.log(f"engines: {size} sampling engine(s) of {model} up"
                     + (f" ({taken} taken over from a model given back)" if taken else ""))
        return pool[:size]

    def judge_app(self, panel: Panel, *, keep: Collection[str] = ()) -> str:
        """The name of the Serve application that scores with ``panel``, started on the first ask. The first
        panel of the run is the main judge (HTTP on its host and port); others get their own app, handle only. On
        CPU, room is never made by giving back the sampling engines of the models in ``keep``."""
        if panel not in self.apps:
            name = self._name(panel)
            main = name == self.app
            route = ROUTE if self.app == APP else f"{ROUTE}/{self.app}"
            if not self.resources.use_gpu:
                self.make_room(len(panel.judges) * self.resources.judge_engines * self.resources.cpus_per_engine)
                self.memory_for_app(panel, sum(self.resources.judge_engines * engine_bytes(j.model, self.engine)
                                               for j in panel.judges), f"judge app {name}", keep=keep)
            serve.start(http_options={"host": panel.http_host, "port": panel.http_port})
            serve.run(build_app(panel, self.engine, self.resources), name=name, route_prefix=route if main else None)
            self.apps[panel] = name
            where = f", POST http://{panel.http_host}:{panel.http_port}{route}" if main else ""
            self.log(f"engines: judge app {name} up ({len(panel.judges)} judge(s){where})")
        return self.apps[panel]

    def reward_app(self, server: RewardServer, *, keep: Collection[str] = ()) -> str:
        """The name of the Serve application scoring with the reward model ``server`` (handle only), started on
        the first ask and kept until given back (``keep_only``, ``before_training``); ``keep`` as ``judge_app``."""
        if server not in self.rewards:
            name = self._name(server)
            if not self.resources.use_gpu:
                self.make_room(self.resources.judge_engines * self.resources.cpus_per_engine)
                self.memory_for_app(server, self.resources.judge_engines * engine_bytes(server.model, self.engine),
                                    f"reward app {name}", keep=keep)
            serve.start(http_options={"host": "127.0.0.1"})
            serve.run(server.app(self.engine, self.resources), name=name, route_prefix=None)
            self.rewards[server] = name
            self.log(f"engines: reward app {name} up ({server.label or server.model})")
        return self.rewards[server]

    def _name(self, panel: Panel | RewardServer) -> str:
        """``panel``'s app name (``names``): the run's first judge panel is the main judge, ``<app>``; later ones
        ``<app>-1``, ``<app>-2``, ...; reward models ``<app>-rm-0``, ..."""
        if panel not in self.names:
            reward = isinstance(panel, RewardServer)
            k = sum(isinstance(p, RewardServer) == reward for p in self.names)
            self.names[panel] = f"{self.app}-rm-{k}" if reward else f"{self.app}-{k}" if k else self.app
        return self.names[panel]

    def stop_judge(self, panel: Panel | RewardServer) -> None:
        if isinstance(panel, RewardServer):
            if (name := self.rewards.pop(panel, None)) is not None:
                serve.delete(name)
            return
        if (name := self.apps.pop(panel, None)) is not None:
            serve.delete(name)

    def release(self, model: str, *, end: bool = False) -> None:
        """Give back the sampling engines of ``model``: ended on GPU (or when ``end``: memory is short); on CPU
        shut down and kept as spares."""
        actors = self.pools.pop(model, [])
        if self.resources.use_gpu or end:
            for actor in actors:
                ray.kill(actor)
            self._forget(actors)
            return
        for actor in actors:
            actor.unload.remote()
        self.spare += actors

    def end_spares(self, keep: int = 0) -> None:
        """End the spare engine processes but the first ``keep`` (about to be taken over)."""
        ended, self.spare = self.spare[keep:], self.spare[:keep]
        for actor in ended:
            ray.kill(actor)
        self._forget(ended)

    def _forget(self, actors: Collection[Any]) -> None:
        """Drop ended engines from ``loading``: their memory comes back before their reference resolves."""
        self.loading = [entry for entry in self.loading if entry[2] not in actors]

    def make_room(self, cpus: float) -> None:
        """End the spare engine processes when the cluster lacks ``cpus`` free CPUs for what starts next (a judge
        app, an embedder pool): a spare holds its CPUs and must never keep a stage from starting."""
        if self.spare and _free_cpus(cpus, wait_s=0) < cpus:
            self.log(f"engines: ended {len(self.spare)} spare engine process(es) to free CPUs")
            self.end_spares()
            _free_cpus(cpus)

    def memory_for_engines(self, need: int, *, keep: Collection[Panel | RewardServer] = (), spares: int = 0
                           ) -> None:
        """On CPU, before starting sampling engines that need ``need`` bytes (``alma_ray.placement.engine_bytes``,
        spares taken over included): when this node has less free, give back the judge and reward apps (a stage
        that starts engines does not score; an app restarts when next asked for), then end the spares. Else Ray's
        memory monitor kills the new engine, and Ray restarts it, in a loop that never ends."""
        self._room(need, "sampling engines", self._apps(skip=keep) + self._spares(spares))

    def memory_for_app(self, panel: Panel | RewardServer, need: int, what: str, *, keep: Collection[str] = ()
                       ) -> None:
        """On CPU, before a judge or reward app that needs ``need`` bytes starts: when this node has less free,
        end the spares, then give back the other apps, then the sampling pools (a scoring stage samples nothing;
        a pool restarts when next asked for). Else Ray's memory monitor kills a replica or an engine, and Ray
        restarts it, in a loop that never ends."""
        self._room(need, what, self._spares() + self._apps(skip=[panel]) + self._pools(skip=keep))

    def _spares(self, keep: int = 0) -> list[tuple[str, Callable[[], None]]]:
        """Ending the spare engine processes but the first ``keep``, as a ``_room`` give-back, if there are any."""
        if len(self.spare) <= keep:
            return []
        return [(f"{len(self.spare) - keep} spare engine process(es)", partial(self.end_spares, keep))]

    def _apps(self, skip: Collection[Panel | RewardServer] = ()) -> list[tuple[str, Callable[[], None]]]:
        """Giving back each judge and reward app but those in ``skip``, as ``_room`` give-backs."""
        held: list[tuple[Panel | RewardServer, str]] = [*self.apps.items(), *self.rewards.items()]
        return [(f"judge app {name}", partial(self.stop_judge, p)) for p, name in held if p not in skip]

    def _pools(self, skip: Collection[str] = ()) -> list[tuple[str, Callable[[], None]]]:
        """Ending the sampling engines of each model but those in ``skip`` (not kept as spares: a spare holds its CPU
        and its process's memory), as ``_room`` give-backs."""
        return [(f"the sampling engines of {m}", partial(self.release, m, end=True)) for m in self.pools
                if m not in skip]

    def _room(self, need: int, what: str, give_back: list[tuple[str, Callable[[], None]]], *, cpus: float = 0.0,
              advice: str = ENGINE_ADVICE) -> None:
        """Call ``give_back``'s releases in order until this node has ``need`` bytes free for ``what`` (and the
        cluster ``cpus`` free CPUs); say so, with ``advice``, when even all of it leaves the memory short."""
        def free_now(wait_s: float) -> tuple[int, float]:
            return self._free(need, wait_s), _free_cpus(cpus, wait_s) if cpus else 0.0

        free, free_cpus = free_now(0)
        for name, release in give_back:
            if free >= need and free_cpus >= cpus:
                return
            release()
            wanted, had = f"{need / GiB:.1f} GiB", f"{free / GiB:.1f} GiB"
            if cpus:
                wanted, had = f"{wanted} and {cpus:g} CPUs", f"{had} and {free_cpus:g} CPUs"
            self.log(f"engines: gave back {name} to make room for {what} ({wanted}; {had} were free)")
            free, free_cpus = free_now(15.0)
        if free < need:
            self.log(f"engines: {what} need(s) about {need / GiB:.1f} GiB and this node has {free / GiB:.1f} GiB "
                     f"free; if Ray's memory monitor kills them, {advice}")

    def keep_only(self, models: Collection[str], panels: Collection[Panel | RewardServer] = ()) -> None:
        """Give back every sampling engine whose model is not in ``models`` and every judge or reward app not in
        ``panels``."""
        for model in [m for m in self.pools if m not in models]:
            self.release(model)
        held: list[Panel | RewardServer] = [*self.apps, *self.rewards]
        for panel in [p for p in held if p not in panels]:
            self.stop_judge(panel)

    def before_training(self, model: str, train: TrainConfig, *, pairs: bool = False,
                        logit_positions: int | None = None) -> None:
        """Before training ``model`` with ``train`` (``pairs``: two sequences a row, as DPO's; ``logit_positions``:
        the positions a row's loss reads logits at, as the judge's 2, or None for every one). On GPU, give back
        every engine (training needs the devices). On CPU keep them for later stages while the cluster has the CPUs
        training needs beside them (its workers and one for its Ray Data tasks) and this node the memory
        (``alma_ray.placement.training_bytes``); else end the spares, then the sampling engines (ended: a spare
        would keep its CPU and memory), then give back judge apps, until it has (a kept engine would starve the
        training, or get it killed by Ray's memory monitor)."""
        if self.resources.use_gpu:
            self.keep_only(())
            return
        res = self.resources
        self._room(training_bytes(model, train, res.train_workers, sequences=2 if pairs else 1,
                                  logit_positions=logit_positions), "training",
                   self._spares() + self._pools() + self._apps(),  # spares first: they serve nothing now
                   cpus=res.train_workers * res.cpus_per_train_worker + DATA_CPUS, advice=TRAINING_ADVICE)

    def _free(self, need: int, wait_s: float = 15.0) -> int:
        """This node's free memory (``_free_memory``) less what the engines still loading will take."""
        if self.loading:
            refs = [ref for ref, _, _ in self.loading]
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
            self.loading = [entry for entry in self.loading if entry[0] not in ready]
        loading = sum(held for _, held, _ in self.loading)
        return _free_memory(need + loading, wait_s) - loading

    def close(self) -> None:
        self.keep_only(())
        self.end_spares()
        self.loading.clear()
