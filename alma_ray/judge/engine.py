"""One judge's vLLM engine: reads p(0..10) at the rating slot of the rubric (``alma_ray.judge.rubric``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from alma_ray.config import EngineConfig
from alma_ray.engines.build import build_llm, uses_chat_template
from alma_ray.judge.rubric import SCORES, ScoreTokens, judge_prompt_ids, score_distribution


class Judge:
    """A judge's vLLM engine and its scoring: the Serve replicas hold one each (``alma_ray.judge.serve``).

    ``score`` returns, per (prompt, response): ``score`` (real-valued, sum p(s) s), ``score_int`` (the most
    likely rating), ``score_dist`` (p(0..10)), ``score_mass`` (the raw probability on valid ratings) and
    ``judge_flag`` ("" when scored, else one of ``FLAGS``; flagged rows keep NaN scores and are never selected).
    Called as a Ray Data actor it also adds ``judge`` and ``judge_version`` to the batch.
    """

    def __init__(self, model: str, *, name: str, version: str, chat: bool | None, max_response_chars: int,
                 engine: EngineConfig, use_gpu: bool, max_prompt_chars: int = 4000) -> None:
        self.llm = build_llm(model, engine, use_gpu=use_gpu)
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = uses_chat_template(self.tokenizer, chat)
        self.tokens = ScoreTokens.from_tokenizer(self.tokenizer)
        self.name, self.version, self.max_chars, self.max_prompt_chars = name, version, max_response_chars, \
            max_prompt_chars
        self.max_prompt_tokens = engine.max_model_len - 2

    def prompt_ids(self, prompt: str, response: str) -> list[int]:
        return judge_prompt_ids(self.tokenizer, prompt, response, chat=self.chat)

    def _flag(self, prompt: Any, response: Any) -> tuple[str, list[int]]:
        if not isinstance(response, str) or not isinstance(prompt, str):
            return "not_text", []
        if not response.strip():
            return "empty_response", []
        ids = self.prompt_ids(prompt[: self.max_prompt_chars], response[: self.max_chars])
        return ("too_long", []) if len(ids) > self.max_prompt_tokens else ("", ids)

    def score(self, prompts: Sequence[Any], responses: Sequence[Any]) -> dict[str, Any]:
        from vllm import SamplingParams, TokensPrompt

        n = len(prompts)
        flags, ids = zip(*(self._flag(p, r) for p, r in zip(prompts, responses))) if n else ((), ())
        todo = [i for i in range(n) if not flags[i]]
        wanted = self.tokens.digits + ([self.tokens.ten] if self.tokens.ten is not None else [])
        params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=wanted)
        requests = [TokensPrompt(prompt_token_ids=ids[i]) for i in todo]
        requests += [TokensPrompt(prompt_token_ids=ids[i] + [self.tokens.digits[1]]) for i in todo]
        outputs = self.llm.generate(requests, params, use_tqdm=False) if requests else []

        dists = np.full((n, 11), np.nan)
        mass = np.full(n, np.nan)
        for k, i in enumerate(todo):
            first = {t: lp.logprob for t, lp in outputs[k].outputs[0].logprobs[0].items()}  # type: ignore[index]
            after = {t: lp.logprob
                     for t, lp in outputs[len(todo) + k].outputs[0].logprobs[0].items()}  # type: ignore[index]
            dists[i], mass[i] = score_distribution(first, after, self.tokens)
        return {"score": dists @ SCORES,
                "score_int": np.where(np.isnan(dists[:, 0]), -1, np.nan_to_num(dists).argmax(axis=1)),
                "score_dist": list(dists), "score_mass": mass, "judge_flag": np.array(flags, dtype=object)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["prompt"])
        return {**batch, "judge": np.array([self.name] * n), "judge_version": np.array([self.version] * n),
                **self.score(list(batch["prompt"]), list(batch["response"]))}
