"""The judge build's stages that need no engine: self-distillation targets from a judge's scores."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from alma_ray.stages.judge_build import distill_rows


def test_distill_targets_are_the_judges_distribution_or_its_rounded_expectation(tmp_path: Path) -> None:
    import pyarrow as pa

    dist = np.zeros(11)
    dist[[3, 9]] = [0.3, 0.5]  # unnormalized: 0.2 of the mass sat on tokens that are not ratings
    scored = {"prompt": ["p", "p", "q"], "response": ["a", "b", ""], "score": [6.75, 2.0, float("nan")],
              "score_dist": [dist.tolist(), np.eye(11)[2].tolist(), [0.0] * 11],
              "judge_flag": ["", "", "empty_response"]}
    pq.write_table(pa.table(scored), tmp_path / "scores.parquet")
    soft = distill_rows(tmp_path, "distribution")
    hard = distill_rows(tmp_path, "rounded")
    assert [r["response"] for r in soft] == [r["response"] for r in hard] == ["a", "b"]  # flagged rows left out
    np.testing.assert_allclose(soft[0]["target"], dist / 0.8, rtol=1e-6)
    assert int(np.argmax(hard[0]["target"])) == 7 and hard[0]["target"].sum() == 1  # round(6.75) = 7, one-hot
    np.testing.assert_allclose(soft[1]["target"], hard[1]["target"])
