"""The one shape of a served app: what ``Engines`` needs to start, size, name and stop any scorer that runs as a
Ray Serve application. Judge panels (``alma_ray.judge.serve.Panel``) and reward models
(``alma_ray.reward.RewardServer``) have it, and so does any new scorer: an engine-backed or rule-based app plugs in
by giving these attributes, with no change to the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from alma_ray.config import EngineConfig, ResourcesConfig
from alma_ray.store import text_digest

JUDGE = "judge"
"""The kind of the run's judge panels: its first is the main judge (``<prefix>``, HTTP)."""
APP = "alma-judge"
"""The Serve application name of engines outside a run (tests, benchmarks); a run's apps are named from
``app_prefix``."""


def app_prefix(run_dir: Path) -> str:
    """The prefix of a run's Serve applications: the run's name and a hash of its directory (two runs on one
    cluster never touch each other's apps)."""
    return f"{APP}-{run_dir.name}-{text_digest(str(run_dir))[:6]}"


class ServedApp(Protocol):
    """A scorer served on Ray Serve. Frozen and hashable: ``Engines`` keys its apps by it."""

    kind: ClassVar[str]
    """What names it: the run's first app of a kind is ``<prefix>`` (judges) or ``<prefix>-<kind>-0``, later
    ones count up."""
    route: ClassVar[str | None]
    """The HTTP path the run's first app of this kind answers at (None: a handle only)."""

    @property
    def name(self) -> str:
        """What the app's rows call their scorer (lineage)."""

    def loads(self) -> list[str]:
        """The model folders its replicas hold (each takes an engine's memory and CPUs); none for a rule scorer."""

    def http_options(self) -> dict[str, Any]:
        """Serve's HTTP options, for the first app that starts Serve on the cluster."""

    def build(self, engine: EngineConfig, resources: ResourcesConfig) -> Any:
        """The Serve application (``serve.run``'s argument)."""
