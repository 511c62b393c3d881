"""k-means on the embeddings (faiss) and streaming assignment (Ray Data), on vectors with a known structure."""

from __future__ import annotations

import numpy as np
import pytest

from alma_ray.config import ClusteringConfig
from alma_ray.stages.cluster import PoolTooSmallError, assign_clusters, size_histogram, train_centroids


def _blobs(per_blob: int = 20, dim: int = 8, seed: int = 0) -> tuple[object, np.ndarray]:
    """Unit vectors around three orthogonal directions; returns (dataset, true blob of each row)."""
    import ray.data

    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for blob in range(3):
        for i in range(per_blob):
            v = np.eye(dim)[blob] + 0.05 * rng.standard_normal(dim)
            rows.append({"prompt_id": f"b{blob}-{i}", "prompt": f"prompt {blob} {i}",
                         "embedding": (v / np.linalg.norm(v)).astype(np.float32)})
            truth.append(blob)
    return ray.data.from_items(rows, override_num_blocks=4), np.array(truth)


@pytest.mark.usefixtures("ray_local")
def test_kmeans_finds_the_blobs_and_every_prompt_is_assigned() -> None:
    ds, truth = _blobs()
    centroids = train_centroids(ds, k=3, cfg=ClusteringConfig(), rows=60, seed=0)
    assert centroids.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)  # spherical k-means
    out = assign_clusters(ds, centroids).to_pandas().sort_values("prompt_id")
    assert len(out) == 60 and "embedding" not in out.columns
    order = np.argsort([f"b{b}-{i}" for b in range(3) for i in range(20)])
    found = out.cluster_id.to_numpy()
    # each true blob lands in exactly one cluster, and the three clusters differ
    groups = {b: set(found[truth[order] == b]) for b in range(3)}
    assert all(len(g) == 1 for g in groups.values()) and len(set.union(*groups.values())) == 3
    assert (out.cluster_similarity > 0.9).all()


@pytest.mark.usefixtures("ray_local")
def test_a_pool_smaller_than_k_is_refused_with_what_to_change() -> None:
    ds, _ = _blobs(per_blob=1)
    with pytest.raises(PoolTooSmallError, match="raise synthesis.num_requests"):
        train_centroids(ds, k=5, cfg=ClusteringConfig(), rows=3, seed=0)


def test_size_histogram_counts_empty_clusters_and_power_of_two_bins() -> None:
    assert size_histogram([1, 2, 3, 5], k=6) == {"0": 2, "1": 1, "2-3": 2, "4-7": 1}
    assert size_histogram([], k=2) == {"0": 2}
