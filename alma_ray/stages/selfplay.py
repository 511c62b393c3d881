"""RM-guided self-play (RMSP; ALMoST's paper, never released): demonstrations simulated turn by turn.

For each mined prompt a dialogue starts with it as the user's first turn. Each turn the prompted model (a grid
configuration: its model and demonstrations) samples ``k`` candidate assistant turns in one engine call, the reward
model scores them in one call, and the highest-scored non-empty candidate is kept; then the prompted model writes
the user's next turn (in the dialogue format), up to ``turns`` assistant turns. A dialogue ends early when no
candidate is usable or the simulated user writes nothing.

Batched: the turns are a chain of Ray Data batch functions, so every dialogue of a batch advances together and
batches stream through the engines and the reward app. Every candidate and its score is kept as lineage, and each
dialogue's share of the seconds its batches spent in sampling and in scoring calls (``sample_s``, ``score_s``).
``Demonstrations`` then turns each kept assistant turn into an SFT row: the dialogue so far as ``prompt`` (under
``alma_ray.demonstrations.DIALOGUE_TEMPLATE``) and the kept turn as ``response``.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import Dataset

from alma_ray.config import SelfPlayConfig
from alma_ray.demonstrations import ASSISTANT, HUMAN, TURN_STOP, USER_STOP, Dialogue, as_prompt, prompted
from alma_ray.engines.registry import Engines
from alma_ray.engines.sampler import SampleRequest
from alma_ray.ids import stable_seed
from alma_ray.reward import RewardServer, reward_scores
from alma_ray.stages.base import Stage
from alma_ray.store import input_path


@dataclass(frozen=True)
class Player:
    """What plays: the engines of the prompted model, its demonstrations, and how it samples."""

    engines: list[Any]
    demos: list[Dialogue]
    shots: int
    assistant: SampleRequest
    user: SampleRequest
    reward_app: str
    progress: Any = None

    def sample(self, texts: list[str], ids: list[str], request: SampleRequest, turn: int) -> list[str]:
        """``request.n`` completions per text, in order (one engine call)."""
        batch = {"prompt": texts, "prompt_id": [f"{pid}/turn-{turn}" for pid in ids]}
        engine = self.engines[stable_seed(ids[0]) % len(self.engines)]
        rows = ray.get(engine.sample.remote(batch, request, self.progress))
        return [str(r).strip() for r in rows["response"]]


def _timed(batch: dict[str, Any], key: str, started: float, rows: list[int]) -> list[float]:
    """``batch[key]`` with the seconds since ``started`` shared out over ``rows`` (the batch's live dialogues)."""
    spent = list(batch[key])
    for i in rows:
        spent[i] = float(spent[i]) + (time.time() - started) / len(rows)
    return spent


def _in(row: dict[str, Any], *, ids: frozenset[str]) -> bool:
    return row["prompt_id"] in ids


def _start(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(batch["prompt"])
    return {"prompt_id": batch["prompt_id"], "prompt": batch["prompt"], "source": batch["source"],
            "dialogue": [json.dumps([{"role": "human", "text": str(p)}]) for p in batch["prompt"]],
            "candidates": [json.dumps([]) for _ in range(n)], "ended_by": [""] * n, "sample_s": [0.0] * n,
            "score_s": [0.0] * n}


def _assistant_turn(batch: dict[str, np.ndarray], *, player: Player, turn: int, k: int) -> dict[str, Any]:
    dialogues = [json.loads(d) for d in batch["dialogue"]]
    candidates = [json.loads(c) for c in batch["candidates"]]
    ended = list(batch["ended_by"])
    live = [i for i in range(len(dialogues)) if not ended[i]]
    sample_s, score_s = list(batch["sample_s"]), list(batch["score_s"])
    if live:
        started = time.time()
        texts = player.sample([prompted(player.demos, player.shots, dialogues[i]) for i in live],
                              [str(batch["prompt_id"][i]) for i in live], player.assistant, turn)
        sample_s, started = _timed(batch, "sample_s", started, live), time.time()
        rm_prompts = [as_prompt(dialogues[i]) for i in live for _ in range(k)]
        scores = reward_scores(player.reward_app, rm_prompts, texts)
        score_s = _timed(batch, "score_s", started, live)
        for j, i in enumerate(live):
            mine = [{"text": texts[j * k + c], "reward": scores[j * k + c]["reward"]} for c in range(k)]
            usable = [c for c in range(k) if not scores[j * k + c]["reward_flag"]
                      and HUMAN not in mine[c]["text"] and ASSISTANT not in mine[c]["text"]]
            best = max(usable, key=lambda c: (mine[c]["reward"], -c)) if usable else None
            candidates[i].append({"turn": turn, "kept": best, "candidates": mine})
            if best is None:
                ended[i] = "no_candidate"
            else:
                dialogues[i].append({"role": "assistant", "text": mine[best]["text"]})
    return {**batch, "dialogue": [json.dumps(d) for d in dialogues],
            "candidates": [json.dumps(c) for c in candidates], "ended_by": ended, "sample_s": sample_s,
            "score_s": score_s}


def _user_turn(batch: dict[str, np.ndarray], *, player: Player, turn: int) -> dict[str, Any]:
    dialogues = [json.loads(d) for d in batch["dialogue"]]
    ended = list(batch["ended_by"])
    live = [i for i in range(len(dialogues)) if not ended[i]]
    sample_s = list(batch["sample_s"])
    if live:
        started = time.time()
        texts = player.sample([prompted(player.demos, player.shots, dialogues[i], next_role="human") for i in live],
                              [str(batch["prompt_id"][i]) for i in live], player.user, turn)
        sample_s = _timed(batch, "sample_s", started, live)
        for i, text in zip(live, texts):
            if not text or HUMAN in text or ASSISTANT in text:
                ended[i] = "user_empty"
            else:
                dialogues[i].append({"role": "human", "text": text})
    return {**batch, "dialogue": [json.dumps(d) for d in dialogues], "ended_by": ended, "sample_s": sample_s}


def _finish(batch: pd.DataFrame, *, turns: int, player: str, reward_model: str) -> pd.DataFrame:
    kept = [sum(t["role"] == "assistant" for t in json.loads(d)) for d in batch["dialogue"]]
    batch["turns"] = kept
    batch["ended_by"] = [e or ("turns" if k == turns else "user_empty") for e, k in zip(batch["ended_by"], kept)]
    batch["player"] = player
    batch["reward_model"] = reward_model
    return batch


def selfplay_tally(table: pa.Table) -> dict[str, Any]:
    df = table.select(["turns", "ended_by", "sample_s", "score_s"]).to_pandas()
    return {"dialogues": len(df), "turns": int(df.turns.sum()), "empty": int((df.turns == 0).sum()),
            "ended_by": {str(k): int(v) for k, v in df.ended_by.value_counts().items()},
            "sample_s": float(df.sample_s.sum()), "score_s": float(df.score_s.sum())}


@dataclass
class SelfPlay(Stage):
    """RMSP dialogues from the input's accepted mined prompts (the first ``cfg.prompts``, or all)."""

    cfg: SelfPlayConfig
    player: str
    model: str
    demos: list[Dialogue]
    shots: int
    server: RewardServer
    engines: Engines
    seed: int
    name: str = "selfplay"
    needs: tuple[str, ...] = ("prompt", "prompt_id", "reject", "source")
    empty_hint: str = "no mined prompt was accepted: raise mining.num_requests"
    tally = staticmethod(selfplay_tally)
    shows_progress = True

    def loads(self) -> list[str]:
        return [self.model, self.server.model]

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        cfg = self.cfg
        prompts = data.filter(expr="reject == ''").select_columns(["prompt_id", "prompt", "source"])
        if cfg.prompts is not None:  # the first accepted prompts in mining order, the same on every rerun
            assert self.input_dir is not None
            columns = ["prompt_id", "reject", "wave", "request_index"]
            mined = pq.read_table(input_path(self.input_dir), columns=columns).to_pandas()
            first = mined[mined.reject == ""].sort_values(["wave", "request_index"]).prompt_id.head(cfg.prompts)
            prompts = prompts.filter(fn=functools.partial(_in, ids=frozenset(first)))
        salt = f"{self.seed}:selfplay"
        player = Player(
            engines=self.engines.samplers(self.model, self.engines.resources.engines_per_checkpoint,
                                          keep=[self.server]),  # on CPU, room for the one is not made from the other
            demos=self.demos, shots=self.shots, reward_app=self.engines.app(self.server, keep=[self.model]),
            assistant=SampleRequest(self.player, cfg.k, dict(temperature=cfg.temperature, top_p=cfg.top_p,
                                                             max_tokens=cfg.max_tokens, stop=TURN_STOP),
                                    False, "{prompt}", salt, model=self.model),
            user=SampleRequest(f"{self.player}:user", 1, dict(temperature=cfg.temperature, top_p=cfg.top_p,
                                                              max_tokens=cfg.user_max_tokens, stop=USER_STOP),
                               False, "{prompt}", salt, model=self.model),
            progress=self.progress)
        ds = prompts.map_batches(_start, batch_size=self.engines.engine.batch_size, num_cpus=0)
        for turn in range(cfg.turns):
            if turn:
                ds = ds.map_batches(_user_turn, batch_size=self.engines.engine.batch_size,  # type: ignore[arg-type]
                                    num_cpus=0, fn_kwargs=dict(player=player, turn=turn))
            ds = ds.map_batches(_assistant_turn, batch_size=self.engines.engine.batch_size,  # type: ignore[arg-type]
                                num_cpus=0, fn_kwargs=dict(player=player, turn=turn, k=cfg.k))
        return ds.map_batches(_finish, batch_format="pandas",  # type: ignore[arg-type]
                              fn_kwargs=dict(turns=cfg.turns, player=self.player, reward_model=self.server.label))

    def progress_total(self) -> int | None:
        return None  # dialogues end at different turns

    def figures(self, tallies: list[Any], rows: int) -> dict[str, Any]:
        ended: dict[str, int] = {}
        for t in tallies:
            for k, v in t["ended_by"].items():
                ended[k] = ended.get(k, 0) + v
        turns = sum(t["turns"] for t in tallies)
        return {"dialogues": rows, "assistant_turns": turns, "turns_per_dialogue": turns / rows,
                "without_turn": sum(t["empty"] for t in tallies), "ended_by": ended, "k": self.cfg.k,
                "max_turns": self.cfg.turns, "player": self.player,
                "sampling_s": sum(t["sample_s"] for t in tallies), "scoring_s": sum(t["score_s"] for t in tallies)}


def demonstration_rows(batch: pd.DataFrame) -> pd.DataFrame:
    """One SFT row per kept assistant turn: the dialogue before it as ``prompt``, the turn as ``response``."""
    rows = []
    for _, r in batch.iterrows():
        turns: Dialogue = json.loads(r["dialogue"])
        kept = [c for c in json.loads(r["candidates"]) if c["kept"] is not None]
        for t, (i, turn) in enumerate((i, x) for i, x in enumerate(turns) if x["role"] == "assistant"):
            rows.append({"prompt_id": r["prompt_id"], "prompt": as_prompt(turns[:i]), "response": turn["text"],
                         "turn": t, "reward": float(kept[t]["candidates"][kept[t]["kept"]]["reward"]),
                         "candidates": len(kept[t]["candidates"]), "player": r["player"],
                         "reward_model": r["reward_model"], "source": f"rmsp:{r['player']}"})
    columns = ["prompt_id", "prompt", "response", "turn", "reward", "candidates", "player", "reward_model", "source"]
    return pd.DataFrame(rows, columns=columns)


@dataclass
class Demonstrations(Stage):
    """The self-play dialogues as SFT rows (``prompt``/``response``, with the kept turn's reward as lineage)."""

    name: str = "demonstrations"
    needs: tuple[str, ...] = ("prompt_id", "dialogue", "candidates", "player", "reward_model")
    empty_hint: str = "no self-play dialogue kept an assistant turn: see the selfplay stage's ended_by"

    def transform(self, data: Dataset | None) -> Dataset:
        assert data is not None
        return data.map_batches(demonstration_rows, batch_format="pandas")
