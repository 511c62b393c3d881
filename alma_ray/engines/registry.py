"""The registry of a run's engines (``Engines``): the sampling pools by model, the served apps (judge panels,
reward models, rule scorers: anything of the ``ServedApp`` shape) and what each gives back for another to start."""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import partial
from typing import Any

import ray
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

from alma_ray.config import EngineConfig, ResourcesConfig, TrainConfig
from alma_ray.engines import host
from alma_ray.engines.apps import APP, JUDGE, ServedApp
from alma_ray.engines.build import actor_remote_args
from alma_ray.engines.host import DATA_CPUS, ENGINE_ADVICE, TRAINING_ADVICE
from alma_ray.engines.sampler import SamplingEngine
from alma_ray.placement import GiB, engine_bytes, training_bytes


class Engines:
    """The engines one run keeps; ``with Engines(...) as engines:`` ends them when the run ends."""

    def __init__(self, engine: EngineConfig, resources: ResourcesConfig, *, log: Any = None, prefix: str = APP
                 ) -> None:
        self.engine, self.resources = engine, resources
        self.log = log or (lambda line: None)
        self.prefix = prefix
        """The prefix of this run's Serve applications (``apps.app_prefix``): two runs on one cluster never touch
        each other's judge."""
        self.pools: dict[str, list[Any]] = {}
        self.spare: list[Any] = []
        """Sampling engine actors given back on CPU: their engine shut down, the process kept with vLLM imported.
        The next pool takes them before starting new processes (on GPU an actor given back ends, freeing its
        devices)."""
        self.apps: dict[ServedApp, str] = {}
        self.loading: list[tuple[Any, int, Any]] = []
        """(a reference that resolves once the engine holds its model, the bytes it will hold, the actor) of
        sampling engines started or taken over on CPU: an engine loads after ``samplers`` returns, so every check
        counts it as loaded until it has (two engines started back to back once both passed a check that only one
        fitted)."""
        self.names: dict[ServedApp, str] = {}
        """Each app's name, kept when it is given back and started again (a name counted from the apps up would
        be a live app's name after another was given back, and ``serve.run`` would replace that app)."""

    def __enter__(self) -> Engines:
        self.clean_up_dead_apps()
        return self

    def clean_up_dead_apps(self) -> None:
        """Delete the Serve applications an earlier, killed driver of this run left up (and the devices they
        hold). The run directory's lock says that driver is gone, so every app under this run's prefix is its.
        Engines under the shared default name (benchmarks, tests) clean up nothing."""
        if self.prefix == APP:
            return
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:
            return  # Serve is not running on this cluster
        for name in list(serve.status().applications):
            if name == self.prefix or name.startswith(f"{self.prefix}-"):
                self.log(f"engines: deleting app {name}, left up by an earlier driver of this run")
                serve.delete(name)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def samplers(self, model: str, size: int, *, keep: Collection[ServedApp] = ()) -> list[Any]:
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

    def app(self, served: ServedApp, *, keep: Collection[str] = ()) -> str:
        """The name of the Serve application of ``served`` (a judge panel, a reward model, a rule scorer), started
        on the first ask and kept until given back (``keep_only``, ``before_training``, ``stop_app``). The run's
        first app of a kind with a ``route`` answers HTTP there (on the app's host and port); the others are
        handles only. On CPU, room is never made by giving back the sampling engines of the models in ``keep``."""
        if served not in self.apps:
            name = self._name(served)
            main = served.route is not None and self.names_of(served.kind)[0] == served
            route = None if not main else served.route if self.prefix == APP else f"{served.route}/{self.prefix}"
            if not self.resources.use_gpu and (models := served.loads()):
                res = self.resources
                self.make_room(len(models) * res.judge_engines * res.cpus_per_engine)
                self.memory_for_app(served, sum(res.judge_engines * engine_bytes(m, self.engine) for m in models),
                                    f"{served.kind} app {name}", keep=keep)
            options = served.http_options()
            serve.start(http_options=options)
            serve.run(served.build(self.engine, self.resources), name=name, route_prefix=route)
            self.apps[served] = name
            where = f", POST http://{options['host']}:{options.get('port', 8000)}{route}" if route else ""
            self.log(f"engines: {served.kind} app {name} up ({served.name}{where})")
        return self.apps[served]

    def names_of(self, kind: str) -> list[ServedApp]:
        """The apps of ``kind`` this run has named, in the order they were first asked for."""
        return [s for s in self.names if s.kind == kind]

    def _name(self, served: ServedApp) -> str:
        """``served``'s app name (``names``): the run's first judge panel is the main judge, ``<app>``, later
        ones ``<app>-1``, ``<app>-2``, ...; apps of other kinds ``<app>-<kind>-0``, ..."""
        if served not in self.names:
            k = len(self.names_of(served.kind))
            self.names[served] = (f"{self.prefix}-{k}" if k else self.prefix) if served.kind == JUDGE else \
                f"{self.prefix}-{served.kind}-{k}"
        return self.names[served]

    def stop_app(self, served: ServedApp) -> None:
        """Give back ``served``'s Serve application (a later ask starts it again, under the same name)."""
        if (name := self.apps.pop(served, None)) is not None:
            serve.delete(name)

    def update_weights(self, model: str, new: str) -> list[Any]:
        """The live engines of ``model``'s pool take ``new``'s weights in place (``SamplingEngine.reload_weights``)
        and are ``new``'s pool from then on: an RL step's rollout engines after each policy update, with no new
        actor. Returns the pool."""
        pool = self.pools.pop(model, [])
        ray.get([actor.reload_weights.remote(new) for actor in pool])
        self.pools.setdefault(new, []).extend(pool)  # with any engines that already held it
        return self.pools[new]

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
        if self.spare and host.free_cpus(cpus, wait_s=0) < cpus:
            self.log(f"engines: ended {len(self.spare)} spare engine process(es) to free CPUs")
            self.end_spares()
            host.free_cpus(cpus)

    def memory_for_engines(self, need: int, *, keep: Collection[ServedApp] = (), spares: int = 0
                           ) -> None:
        """On CPU, before starting sampling engines that need ``need`` bytes (``alma_ray.placement.engine_bytes``,
        spares taken over included): when this node has less free, give back the judge and reward apps (a stage
        that starts engines does not score; an app restarts when next asked for), then end the spares. Else Ray's
        memory monitor kills the new engine, and Ray restarts it, in a loop that never ends."""
        self._room(need, "sampling engines", self._apps(skip=keep) + self._spares(spares))

    def memory_for_app(self, served: ServedApp, need: int, what: str, *, keep: Collection[str] = ()
                       ) -> None:
        """On CPU, before an app that needs ``need`` bytes starts: when this node has less free,
        end the spares, then give back the other apps, then the sampling pools (a scoring stage samples nothing;
        a pool restarts when next asked for). Else Ray's memory monitor kills a replica or an engine, and Ray
        restarts it, in a loop that never ends."""
        self._room(need, what, self._spares() + self._apps(skip=[served]) + self._pools(skip=keep))

    def _spares(self, keep: int = 0) -> list[tuple[str, Callable[[], None]]]:
        """Ending the spare engine processes but the first ``keep``, as a ``_room`` give-back, if there are any."""
        if len(self.spare) <= keep:
            return []
        return [(f"{len(self.spare) - keep} spare engine process(es)", partial(self.end_spares, keep))]

    def _apps(self, skip: Collection[ServedApp] = ()) -> list[tuple[str, Callable[[], None]]]:
        """Giving back each app but those in ``skip``, as ``_room`` give-backs; never an app that loads no model
        (a rule scorer: giving it back frees nothing)."""
        return [(f"{s.kind} app {name}", partial(self.stop_app, s)) for s, name in self.apps.items()
                if s not in skip and s.loads()]

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
            return self._free(need, wait_s), host.free_cpus(cpus, wait_s) if cpus else 0.0

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

    def keep_only(self, models: Collection[str], panels: Collection[ServedApp] = ()) -> None:
        """Give back every sampling engine whose model is not in ``models`` and every app not in ``panels`` that
        holds an engine (a rule scorer holds none: it stays up until ``close``)."""
        for model in [m for m in self.pools if m not in models]:
            self.release(model)
        for served in [s for s in self.apps if s not in panels and s.loads()]:
            self.stop_app(served)

    def before_training(self, model: str, train: TrainConfig, *, sequences: int = 1,
                        logit_positions: int | None = None, keep_models: Collection[str] = (),
                        keep_apps: Collection[ServedApp] = ()) -> None:
        """Room for training ``model`` with ``train`` (``sequences`` a row: DPO's 2; ``logit_positions``: the
        positions a row's loss reads logits at, as the judge's 2, or None for every one), asked by the training
        stage when it runs. ``keep_models``' pools and ``keep_apps`` stay whatever the room (a trainer that rolls
        out and scores beside its training). On GPU, give back every other engine (training needs the devices). On
        CPU keep them for later stages while the cluster has the CPUs training needs beside them (its workers and
        one for its Ray Data tasks) and this node the memory (``alma_ray.placement.training_bytes``); else end the
        spares, then the sampling engines (ended: a spare would keep its CPU and memory), then give back the apps,
        until it has (a kept engine would starve the training, or get it killed by Ray's memory monitor)."""
        if self.resources.use_gpu:
            self.keep_only(keep_models, keep_apps)
            return
        res = self.resources
        self._room(training_bytes(model, train, res.train_workers, sequences=sequences,
                                  logit_positions=logit_positions), "training",
                   self._spares() + self._pools(skip=keep_models) + self._apps(skip=keep_apps),  # spares first
                   cpus=res.train_workers * res.cpus_per_train_worker + DATA_CPUS, advice=TRAINING_ADVICE)

    def _free(self, need: int, wait_s: float = 15.0) -> int:
        """This node's free memory (``host.free_memory``) less what the engines still loading will take."""
        if self.loading:
            refs = [ref for ref, _, _ in self.loading]
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
            self.loading = [entry for entry in self.loading if entry[0] not in ready]
        loading = sum(held for _, held, _ in self.loading)
        return host.free_memory(need + loading, wait_s) - loading

    def close(self) -> None:
        self.keep_only(())
        for served in list(self.apps):
            self.stop_app(served)
        self.end_spares()
        self.loading.clear()
