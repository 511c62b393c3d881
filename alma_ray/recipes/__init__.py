"""The recipes: ``config.recipe`` names one (``alma``, ``almost``). Each is a package with its ``Recipe``
(``plan``, ``run``, ``report``) in ``__init__`` and its parts beside it; ``alma_ray.recipes.base`` says what a
recipe is."""

from __future__ import annotations

from pathlib import Path

from alma_ray.config import AnyConfig, load_config
from alma_ray.recipes.base import Recipe


def recipe_for(config: AnyConfig) -> Recipe:
    """The recipe ``config.recipe`` names."""
    from alma_ray.recipes.alma import ALMA
    from alma_ray.recipes.almost import ALMOST

    recipes: dict[str, Recipe] = {"alma": ALMA, "almost": ALMOST}
    return recipes[config.recipe]


def config_of(run_dir: Path) -> AnyConfig:
    """The config a run directory was written with (its ``config.yaml``)."""
    return load_config(Path(run_dir) / "config.yaml")
