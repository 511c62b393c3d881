from alma_ray.stages.generate import split_samples, stable_seed


def test_split_samples_by_weight() -> None:
    assert split_samples(200, [1, 1, 1]) == [67, 67, 66]
    assert split_samples(3, [2, 1]) == [2, 1]
    assert split_samples(4, [1]) == [4]
    assert sum(split_samples(7, [0.3, 0.3, 0.4])) == 7


def test_seeds_are_stable_and_distinct() -> None:
    assert stable_seed(0, 1, "a") == stable_seed(0, 1, "a") != stable_seed(0, 1, "b")
    assert 0 <= stable_seed("x") < 2**31
