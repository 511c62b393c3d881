"""Reading a run's config: a YAML preset (a key given twice refused), ``key=value`` overrides, the schema the
``recipe:`` key names, and error text that names the file and the key and says what to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alma_ray.config.alma import AlmaConfig
from alma_ray.config.almost import AlmostConfig
from alma_ray.config.base import ConfigError, RunConfig

SCHEMAS: dict[str, type[RunConfig]] = {"alma": AlmaConfig, "almost": AlmostConfig}
"""``recipe:`` -> its schema (the discriminator of a preset)."""
AnyConfig = AlmaConfig | AlmostConfig
"""Any recipe's config."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' is given twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)  # type: ignore[no-untyped-call]


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` -> (key.sub, value parsed as YAML, so 3 is an int and [a, b] a list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' is not key=value (e.g. generation.n=8)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML: {e}") from e
    return key.strip(), value


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if not e["loc"]:  # a check across keys: its message names them
            lines.append(f"  - {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{key}': remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"  - missing key '{key}': it has no default, set it in the file or as {key}=...")
        else:
            lines.append(f"  - '{key}' = {e.get('input')!r}: {e['msg']}")
    return "\n".join(lines)


def validate_config(tree: dict[str, Any], source: str = "config") -> AnyConfig:
    """The schema ``tree['recipe']`` names (default ``alma``), validated. Raises ConfigError with a fix-it message."""
    recipe = tree.get("recipe", "alma")
    if recipe not in SCHEMAS:
        raise ConfigError(f"invalid config ({source}):\n  - 'recipe' = {recipe!r}: choose one of {sorted(SCHEMAS)}")
    try:
        return SCHEMAS[recipe].model_validate(tree)  # type: ignore[return-value]
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> AnyConfig:
    """Read a YAML preset, apply ``key=value`` overrides, validate. Raises ConfigError with a fix-it message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (presets live in jobs/configs/)")
    try:
        tree = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(tree).__name__}")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value, f"override '{text}'")
    return validate_config(tree, str(path) + (f" + overrides {list(overrides)}" if overrides else ""))
