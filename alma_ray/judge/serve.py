"""The judge as a Ray Serve application: one deployment per judge of the panel, an ingress that aggregates; and
its Ray Data caller.

- ``Panel`` says which judges one app serves (name, model folder, weight, prompt format) and how it batches.
- ``JudgeReplica`` holds one vLLM engine (``alma_ray.judge.engine.Judge``). Its ``score`` takes a list of
  pairs; ``@serve.batch`` merges concurrent calls into one vLLM call of up to ``judge.max_batch_size`` pairs,
  and runs one batch at a time in a worker thread: the sync engine is never entered twice, and the replica's
  event loop stays free for health checks and new requests.
- ``JudgeEnsemble`` is the ingress. ``score(pairs)`` (the handle path, used by the pipeline from Ray Data)
  fans each chunk out to every judge and returns, per pair, the weighted mean score over the judges that
  scored it, with each judge's own result. ``POST /`` on ``judge.http_host:http_port`` takes
  ``{"prompt": ..., "response": ...}`` or a list of them, for people and other tools.

- ``score_dataset`` scores a Ray Data stream through the running app (``ServeScoring`` actors call its handle).

Replica count (``resources.judge_engines`` per judge) and each replica's resources come from the config, the
same way the Ray Data engine pools are sized (``alma_ray.placement``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from ray import serve
from ray.data import ActorPoolStrategy, Dataset
from ray.serve.handle import DeploymentHandle

from alma_ray.config import EngineConfig, JudgeConfig, JudgeMember, ResourcesConfig, RuleConfig
from alma_ray.engines.apps import APP, JUDGE
from alma_ray.engines.build import SHUTDOWN_POLL_S, actor_remote_args

ROUTE = "/judge"


def _pairs_in(calls: list[list[dict[str, Any]]]) -> int:
    return sum(len(c) for c in calls)


@serve.deployment
class JudgeReplica:
    """One judge's vLLM engine behind Serve's batching."""

    def __init__(self, model: str, *, name: str, version: str, chat: bool | None, max_response_chars: int,
                 engine: dict[str, Any], use_gpu: bool, max_batch_size: int, max_prompt_chars: int = 4000) -> None:
        from alma_ray.judge.engine import Judge

        self.judge = Judge(model, name=name, version=version, chat=chat, max_response_chars=max_response_chars,
                           max_prompt_chars=max_prompt_chars, engine=EngineConfig(**engine), use_gpu=use_gpu)
        self.score.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]

    def _score(self, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = self.judge.score([p.get("prompt") for p in pairs], [p.get("response") for p in pairs])
        return [{"score": float(out["score"][i]), "score_int": int(out["score_int"][i]),
                 "score_dist": [float(x) for x in out["score_dist"][i]], "score_mass": float(out["score_mass"][i]),
                 "judge_flag": str(out["judge_flag"][i])} for i in range(len(pairs))]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, max_concurrent_batches=1, batch_size_fn=_pairs_in)
    async def score(self, calls: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        flat = [pair for call in calls for pair in call]
        scored = await asyncio.to_thread(self._score, flat)
        out, at = [], 0
        for call in calls:
            out.append(scored[at : at + len(call)])
            at += len(call)
        return out


@serve.deployment(ray_actor_options={"num_cpus": 0})
class RuleReplica:
    """A rule scorer (``alma_ray.judge.rules``): no engine, so no batching; the ingress calls it as a judge."""

    def __init__(self, rules: dict[str, Any]) -> None:
        from alma_ray.judge.rules import RuleScorer

        self.scorer = RuleScorer(RuleConfig(**rules))

    async def score(self, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.scorer.score, [p.get("prompt") for p in pairs],
                                       [p.get("response") for p in pairs], [p.get("instructions") for p in pairs])


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class JudgeEnsemble:
    """Ingress: splits work into chunks a replica batch can hold, asks every judge, aggregates by weight."""

    def __init__(self, judges: dict[str, DeploymentHandle], weights: dict[str, float], *, name: str, version: str,
                 chunk: int, http: HttpLimits | None = None) -> None:
        self.judges, self.weights, self.name, self.version, self.chunk = judges, weights, name, version, chunk
        self.http = http or HttpLimits()

    async def score(self, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        chunks = [pairs[i : i + self.chunk] for i in range(0, len(pairs), self.chunk)]
        calls = {name: [h.score.remote(c) for c in chunks] for name, h in self.judges.items()}
        per_judge = {name: [row for call in await asyncio.gather(*refs) for row in call]
                     for name, refs in calls.items()}
        return [self._aggregate({name: rows[i] for name, rows in per_judge.items()}) for i in range(len(pairs))]

    def _aggregate(self, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
        scored = {n: r for n, r in results.items() if not r["judge_flag"]}
        row: dict[str, Any] = {"judge": self.name, "judge_version": self.version,
                               "member_scores": {n: r["score"] for n, r in results.items()},
                               "member_score_ints": {n: r["score_int"] for n, r in results.items()}}
        if not scored:  # every judge flagged it: report the first judge's reason
            first = next(iter(results.values()))
            return {**row, "score": float("nan"), "score_int": -1, "score_dist": [float("nan")] * 11,
                    "score_mass": float("nan"), "judge_flag": first["judge_flag"]}
        w = np.array([self.weights[n] for n in scored])
        dist = np.average(np.array([r["score_dist"] for r in scored.values()]), axis=0, weights=w)
        return {**row, "score": float(np.average([r["score"] for r in scored.values()], weights=w)),
                "score_int": int(dist.argmax()), "score_dist": dist.tolist(),
                "score_mass": float(np.average([r["score_mass"] for r in scored.values()], weights=w)),
                "judge_flag": ""}

    async def __call__(self, request: Any) -> Any:
        """``POST`` a pair or a list of pairs; malformed, oversized or unauthorised requests get a 4xx that says
        why (never a 500), before anything is tokenized."""
        from starlette.responses import JSONResponse

        def refuse(status: int, why: str) -> Any:
            return JSONResponse({"error": why}, status_code=status)

        if self.http.token_sha256:
            given = request.headers.get("authorization", "")
            digest = hashlib.sha256(given.removeprefix("Bearer ").encode()).hexdigest()
            if not given.startswith("Bearer ") or not hmac.compare_digest(digest, self.http.token_sha256):
                return refuse(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        limit = self.http.max_body_bytes
        if int(request.headers.get("content-length") or 0) > limit:  # refused by its declared length
            if request.headers.get("expect", "").lower() != "100-continue":
                async for _ in request.stream():  # dropped unread: a client still sending gets the 413, not a reset
                    pass
            return refuse(413, f"the body is over {limit} bytes (judge.http_max_body_bytes)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return refuse(413, f"the body is over {limit} bytes (judge.http_max_body_bytes)")
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return refuse(400, "the body must be JSON: {\"prompt\": ..., \"response\": ...} or a list of them")
        single = isinstance(parsed, dict)
        pairs = [parsed] if single else parsed
        if not isinstance(pairs, list) or not all(
                isinstance(p, dict) and isinstance(p.get("prompt"), str) and isinstance(p.get("response"), str)
                for p in pairs):
            return refuse(400, "each item needs 'prompt' and 'response' strings (and, for rule judges, may carry "
                               "'instructions': [{\"id\": ..., \"kwargs\": {...}}])")
        if len(pairs) > self.http.max_pairs:
            return refuse(413, f"{len(pairs)} pairs in one request; at most {self.http.max_pairs} "
                               "(judge.http_max_pairs)")
        rows = _json_safe(await self.score([{"prompt": p["prompt"], "response": p["response"],
                                             "instructions": p.get("instructions")} for p in pairs]))
        return JSONResponse(rows[0] if single else rows)


def _json_safe(value: Any) -> Any:
    """NaN (an unscored row) as JSON null, all the way down."""
    if isinstance(value, float):
        return None if np.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


@dataclass(frozen=True)
class HttpLimits:
    """What the HTTP endpoint accepts: body size, pairs per request, and (when set) the SHA-256 of the bearer
    token it requires (the token itself never leaves the driver)."""

    max_body_bytes: int = 1 << 20
    max_pairs: int = 256
    token_sha256: str = ""

    @classmethod
    def of(cls, judge: JudgeConfig) -> HttpLimits:
        token = os.environ.get(judge.http_token_env, "") if judge.http_token_env else ""
        return cls(judge.http_max_body_bytes, judge.http_max_pairs,
                   hashlib.sha256(token.encode()).hexdigest() if token else "")


@dataclass(frozen=True)
class ServedJudge:
    """One judge of a panel: ``model`` is the folder its engine loads (or ``rules`` score without one); ``label``
    what lineage calls it."""

    name: str
    model: str
    weight: float = 1.0
    chat: bool | None = None
    label: str = ""
    rules: RuleConfig | None = None

    @classmethod
    def of(cls, member: JudgeMember, model: str = "", label: str = "") -> ServedJudge:
        """``member`` served: an LLM judge on ``model`` (its resolved folder), or its rule scorer."""
        if member.rules is not None:
            return cls(member.name, "", member.weight, rules=member.rules)
        return cls(member.name, model, member.weight, member.chat_template, label=label or str(member.model))

    @property
    def lineage(self) -> str:
        if self.rules is not None:
            from alma_ray.judge.rules import label

            return label(self.rules)
        return self.label or self.model


@dataclass(frozen=True)
class Panel:
    """The judges one Serve application holds, how it reads responses, batches and listens."""

    judges: tuple[ServedJudge, ...]
    version: str
    max_response_chars: int
    max_batch_size: int
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    http: HttpLimits = HttpLimits()
    max_prompt_chars: int = 4000

    @classmethod
    def of(cls, judge: JudgeConfig, judges: list[ServedJudge]) -> Panel:
        """A panel of ``judges`` with the judge section's prompt, batching and HTTP settings."""
        return cls(tuple(judges), version=judge.version, max_response_chars=judge.max_response_chars,
                   max_batch_size=judge.max_batch_size, http_host=judge.http_host, http_port=judge.http_port,
                   http=HttpLimits.of(judge), max_prompt_chars=judge.max_prompt_chars)

    @classmethod
    def compare(cls, judge: JudgeConfig, models: Mapping[str, str]) -> Panel:
        """A panel that scores with each of ``models`` (name -> folder) side by side, one weight each (the judge
        build's evaluation and self-distillation scoring)."""
        return cls.of(judge, [ServedJudge(name, model, chat=judge.chat_template) for name, model in models.items()])

    kind: ClassVar[str] = JUDGE
    route: ClassVar[str | None] = ROUTE

    @property
    def name(self) -> str:
        """The ``judge`` lineage value: the model for one judge, else every judge's name, model and weight."""
        if len(self.judges) == 1:
            return self.judges[0].lineage
        return "ensemble(" + ",".join(f"{j.name}={j.lineage}*{j.weight:g}" for j in self.judges) + ")"

    def loads(self) -> list[str]:
        return [j.model for j in self.judges if j.rules is None]

    def http_options(self) -> dict[str, Any]:
        return {"host": self.http_host, "port": self.http_port}

    def build(self, engine: EngineConfig, resources: ResourcesConfig) -> Any:
        return build_app(self, engine, resources)


def build_app(panel: Panel, engine: EngineConfig, resources: ResourcesConfig) -> Any:
    """The Serve application of ``panel``: one deployment per judge, the ingress in front."""
    options = actor_remote_args(engine, use_gpu=resources.use_gpu, cpus=resources.cpus_per_engine)
    judges = {}
    for j in panel.judges:
        if j.rules is not None:
            judges[j.name] = RuleReplica.options(  # type: ignore[attr-defined]
                name=f"rules-{j.name}", graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S).bind(j.rules.model_dump())
            continue
        replica = JudgeReplica.options(  # type: ignore[attr-defined]
            name=f"judge-{j.name}", num_replicas=resources.judge_engines, ray_actor_options=options,
            max_ongoing_requests=4 * max(1, panel.max_batch_size), graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S)
        judges[j.name] = replica.bind(j.model, name=j.name, version=panel.version, chat=j.chat,
                                      max_response_chars=panel.max_response_chars,
                                      max_prompt_chars=panel.max_prompt_chars,
                                      engine=engine.model_dump(), use_gpu=resources.use_gpu,
                                      max_batch_size=panel.max_batch_size)
    return JudgeEnsemble.options(max_ongoing_requests=1024, graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S).bind(  # type: ignore[attr-defined]
        judges, {j.name: j.weight for j in panel.judges}, name=panel.name, version=panel.version,
        chunk=panel.max_batch_size, http=panel.http)


@contextlib.contextmanager
def judge_service(panel: Panel, engine: EngineConfig, resources: ResourcesConfig, *, app: str = APP,
                  route: str = ROUTE) -> Iterator[DeploymentHandle]:
    """Start the judge application (HTTP on the panel's host and port at ``route``), yield its handle, then
    delete it."""
    serve.start(http_options={"host": panel.http_host, "port": panel.http_port})
    handle = serve.run(build_app(panel, engine, resources), name=app, route_prefix=route)
    try:
        yield handle
    finally:
        serve.delete(app)


class ServeScoring:
    """Ray Data actor: scores a batch of responses through the judge application's handle (the pipeline path)."""

    def __init__(self, app: str = APP, progress: Any = None) -> None:
        self.handle = serve.get_app_handle(app)
        self.progress = progress

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        started = time.time()
        instructions = batch.get("instructions")
        pairs = [{"prompt": p, "response": r, "instructions": None if instructions is None else instructions[i]}
                 for i, (p, r) in enumerate(zip(batch["prompt"], batch["response"]))]
        rows = self.handle.score.remote(pairs).result()
        if self.progress is not None:
            self.progress.add.remote(len(rows), 0, started, time.time())
        out: dict[str, Any] = dict(batch)
        for key in ("judge", "judge_version", "score", "score_int", "score_mass", "judge_flag"):
            out[key] = np.array([r[key] for r in rows])
        out["score_dist"] = [np.array(r["score_dist"]) for r in rows]
        out["member_scores"] = [r["member_scores"] for r in rows]
        out["member_score_ints"] = [r["member_score_ints"] for r in rows]
        return out


def score_dataset(responses: Dataset, *, batch_size: int, resources: ResourcesConfig, app: str = APP,
                  progress: Any = None) -> Dataset:
    """Score every (prompt, response) row of ``responses`` through the running judge application ``app``.

    Output columns as ``Judge.score``, plus ``judge``, ``judge_version`` and ``member_scores`` (each judge's own).
    """
    return responses.map_batches(ServeScoring, fn_constructor_kwargs=dict(app=app, progress=progress),
                                 batch_size=batch_size,
                                 compute=ActorPoolStrategy(size=2 * resources.judge_engines), num_cpus=0)
