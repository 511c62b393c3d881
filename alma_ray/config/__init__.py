"""Typed schemas for a run, one per recipe: defaults live here and nowhere else.

A run is described by a YAML preset (``jobs/configs/*.yaml``) plus ``key=value`` overrides from the command line
(``generation.n=8``, ``train.zero_stage=3``). ``recipe:`` selects the schema (``alma``, the default, or ``almost``);
``RunConfig`` holds the sections every recipe shares (models, engine, resources, train, output) and each recipe's schema
adds its own. Unknown keys and bad values stop the run before any work starts, with a message that names the file and
the key. Stages take the sections they use, never the root.

The package, a file each: ``base`` (what every recipe shares), ``alma`` and ``almost`` (each recipe's sections and
schema) and ``load`` (YAML, overrides, validation and its error text). Everything is importable from
``alma_ray.config`` itself.
"""

from alma_ray.config.alma import (
    LATEST as LATEST,
)
from alma_ray.config.alma import (
    ROUND_ONE as ROUND_ONE,
)
from alma_ray.config.alma import (
    AlmaConfig as AlmaConfig,
)
from alma_ray.config.alma import (
    Checkpoint as Checkpoint,
)
from alma_ray.config.alma import (
    ClusteringConfig as ClusteringConfig,
)
from alma_ray.config.alma import (
    DedupConfig as DedupConfig,
)
from alma_ray.config.alma import (
    EmbeddingConfig as EmbeddingConfig,
)
from alma_ray.config.alma import (
    EvalConfig as EvalConfig,
)
from alma_ray.config.alma import (
    GenerationConfig as GenerationConfig,
)
from alma_ray.config.alma import (
    JudgeBuildConfig as JudgeBuildConfig,
)
from alma_ray.config.alma import (
    JudgeConfig as JudgeConfig,
)
from alma_ray.config.alma import (
    JudgeMember as JudgeMember,
)
from alma_ray.config.alma import (
    SeedSFTConfig as SeedSFTConfig,
)
from alma_ray.config.alma import (
    SynthesisConfig as SynthesisConfig,
)
from alma_ray.config.alma import (
    names_run_model as names_run_model,
)
from alma_ray.config.almost import (
    BASE as BASE,
)
from alma_ray.config.almost import (
    RESPONSE_RULES as RESPONSE_RULES,
)
from alma_ray.config.almost import (
    AlmostConfig as AlmostConfig,
)
from alma_ray.config.almost import (
    AlmostEvalConfig as AlmostEvalConfig,
)
from alma_ray.config.almost import (
    GridEntry as GridEntry,
)
from alma_ray.config.almost import (
    MiningConfig as MiningConfig,
)
from alma_ray.config.almost import (
    ResponsesConfig as ResponsesConfig,
)
from alma_ray.config.almost import (
    RewardModelConfig as RewardModelConfig,
)
from alma_ray.config.almost import (
    SelfPlayConfig as SelfPlayConfig,
)
from alma_ray.config.base import (
    ConfigError as ConfigError,
)
from alma_ray.config.base import (
    EngineConfig as EngineConfig,
)
from alma_ray.config.base import (
    ResourcesConfig as ResourcesConfig,
)
from alma_ray.config.base import (
    RuleConfig as RuleConfig,
)
from alma_ray.config.base import (
    RunConfig as RunConfig,
)
from alma_ray.config.base import (
    Section as Section,
)
from alma_ray.config.base import (
    TrainConfig as TrainConfig,
)
from alma_ray.config.load import (
    SCHEMAS as SCHEMAS,
)
from alma_ray.config.load import (
    AnyConfig as AnyConfig,
)
from alma_ray.config.load import (
    load_config as load_config,
)
from alma_ray.config.load import (
    parse_override as parse_override,
)
from alma_ray.config.load import (
    validate_config as validate_config,
)
