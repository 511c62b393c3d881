"""The judge on Ray Serve, for real: two judges (vLLM replicas) and two rule scorers behind the ensemble ingress,
scored through the handle, from Ray Data and over HTTP on 127.0.0.1, under 64 concurrent requests and bad input;
then shut down."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from alma_ray.config import AlmaConfig

pytestmark = pytest.mark.usefixtures("ray_local")
TOKEN = "s3cret"


def _post(url: str, body: Any, token: str | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_judge_app_scores_through_handle_data_and_http(tiny_model: str, serve_port: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.data
    from ray import serve

    from alma_ray.judge.serve import APP, ROUTE, Panel, ServedJudge, judge_service, score_dataset

    port = serve_port  # the session's proxy (Serve listens where it was first started)
    monkeypatch.setenv("ALMA_JUDGE_TOKEN", "s3cret")  # the endpoint then wants it as a bearer token
    config = AlmaConfig.model_validate(dict(
        base_model=tiny_model, generation={"checkpoints": [{"name": "a", "model": tiny_model}]},
        judge={"model": tiny_model, "version": "t1", "max_response_chars": 100_000, "max_batch_size": 16,
               "http_port": port, "http_max_pairs": 8, "http_max_body_bytes": 65_536,
               "max_prompt_chars": 400, "ensemble": [{"name": "plain", "model": tiny_model, "weight": 3,
                                                "chat_template": False},
                                               {"name": "short", "rules": {"max_chars": 12}, "weight": 2},
                                               {"name": "ifb", "rules": {"ifbench": "strict"}}]},
        engine={"max_model_len": 1024, "dtype": "float32"}))
    pairs = [{"prompt": f"tell me about {w}", "response": f"{w} is a word"} for w in ["rain", "sea", "moon"]]
    bad = [{"prompt": "hi", "response": ""}, {"prompt": "hi", "response": "rain " * 5000},
           {"prompt": "hi", "response": None}, {"prompt": "hi", "response": 7}]
    panel = Panel.of(config.judge, [ServedJudge.of(m, tiny_model) for m in config.judge.members])
    assert panel.loads() == [tiny_model, tiny_model]  # rule scorers hold no engine
    with judge_service(panel, config.engine, config.resources) as handle:
        rows = handle.score.remote(pairs + bad).result()
        for p, r in zip(pairs, rows[:3]):
            assert r["judge_flag"] == "" and 0 <= r["score"] <= 10
            main, plain, short = (r["member_scores"][k] for k in ("main", "plain", "short"))
            assert main != pytest.approx(plain)  # the two judges read different prompts
            assert short == pytest.approx(10 * min(1, 12 / len(p["response"])))
            assert math.isnan(r["member_scores"]["ifb"])  # no instructions: that member is left out of the mean
            assert r["score"] == pytest.approx((main + 3 * plain + 2 * short) / 6)
            assert r["judge_version"] == "t1" and r["judge"].startswith("ensemble(main=")
            assert "short=rules-v1(max_chars=12)*2" in r["judge"]  # rule-based, with the rules' version
        assert [r["judge_flag"] for r in rows[3:]] == ["empty_response", "", "not_text", "not_text"]
        assert rows[4]["score"] == pytest.approx(10 * 12 / 25_000)  # too long for the LLMs: the rules alone
        assert all(math.isnan(rows[i]["score"]) for i in (3, 5, 6))

        # The pipeline path: Ray Data calls the handle; every row comes back, with lineage.
        scored = score_dataset(ray.data.from_items(pairs * 8), batch_size=16, resources=config.resources).take_all()
        by_prompt = {p["prompt"]: r["score"] for p, r in zip(pairs, rows)}
        assert len(scored) == 24  # the same scores up to float noise (vLLM batches the rows differently)
        np.testing.assert_allclose([row["score"] for row in scored], [by_prompt[row["prompt"]] for row in scored],
                                   atol=1e-5)

        # HTTP: one pair, a list, bad JSON, and 64 concurrent requests with no error.
        url = f"http://127.0.0.1:{port}{ROUTE}"
        assert _post(url, pairs[0])[0] == 401 and _post(url, pairs[0], "wrong")[0] == 401
        status, one = _post(url, pairs[0], TOKEN)
        assert status == 200 and one["score"] == pytest.approx(rows[0]["score"], abs=1e-6)
        keywords = [{"id": "count:keywords_multiple", "kwargs": {  # IFBench: once, twice, 3, 5 and 7 times
            "keyword1": "kaleidoscope", "keyword2": "nebula", "keyword3": "whisper", "keyword4": "labyrinth",
            "keyword5": "paradox"}}]
        followed = " ".join(["kaleidoscope"] + ["nebula"] * 2 + ["whisper"] * 3 + ["labyrinth"] * 5 + ["paradox"] * 7)
        status, checked = _post(url, [{"prompt": "tell me", "response": followed, "instructions": keywords},
                                      {"prompt": "tell me", "response": "nebula", "instructions": keywords}], TOKEN)
        assert status == 200 and [c["member_scores"]["ifb"] for c in checked] == [10.0, 0.0]
        m = checked[0]["member_scores"]
        assert checked[0]["score"] == pytest.approx((m["main"] + 3 * m["plain"] + 2 * m["short"] + 10.0) / 7)
        status, many = _post(url, [pairs[1], bad[0]], TOKEN)
        assert status == 200 and many[1]["judge_flag"] == "empty_response" and many[1]["score"] is None
        assert _post(url, b"not json", TOKEN)[0] == 400
        assert _post(url, [{"prompt": "x"}], TOKEN)[0] == 400
        assert _post(url, {"prompt": "x", "response": ["not", "text"]}, TOKEN)[0] == 400
        assert _post(url, b"[" * 30_000 + b"]" * 30_000, TOKEN)[0] == 400  # deeply nested: refused, never a 500
        assert _post(url, [pairs[0]] * 9, TOKEN)[0] == 413  # judge.http_max_pairs=8
        assert _post(url, {"prompt": "x" * 70_000, "response": "y"}, TOKEN)[0] == 413  # judge.http_max_body_bytes
        assert _post(url, b"x" * (20 << 20), TOKEN)[0] == 413  # 20 MB: refused by its length, not reset
        status, cut = _post(url, {"prompt": "word " * 12_000, "response": "a word"}, TOKEN)  # under the limit
        assert status == 200 and cut["judge_flag"] == ""  # the prompt is cut like responses, then scored
        with ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(lambda i: _post(url, pairs[i % 3], TOKEN), range(64)))
        assert all(status == 200 for status, _ in answers)
        np.testing.assert_allclose([a["score"] for _, a in answers], [rows[i % 3]["score"] for i in range(64)],
                                   atol=1e-6)
        status = serve.status().applications[APP]
        assert status.status == "RUNNING"
        assert all(d.status == "HEALTHY" for d in status.deployments.values())
    assert APP not in serve.status().applications  # shut down cleanly
