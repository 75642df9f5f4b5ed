"""Search spaces in YAML: dotted config keys -> a constant or a distribution.

    # a space file, e.g. tune/spaces/tiny.yaml
    tune:                      # optional: any config sections, applied over --config
      num_samples: 1
    train:
      checkpoint_every: 10     # a val_loss report (ASHA's unit) every 10 meta steps
    space:
      loss.lambda_kl: {choice: [0.0, 5.0]}
      loss.lambda_ins: {choice: [0.0, 1.0, sigmoid]}
      lora.rank: {grid: [4, 8]}
      train.lr: {loguniform: [1.0e-4, 3.0e-3]}

Distributions: `choice` / `grid` (lists), `uniform` / `loguniform` ([low, high]), `randint`
([low, high), high excluded), or a plain value (a constant). Every value (the endpoints of
ranges) is validated against the config schema up front, so a typo fails before any trial
starts. `lora.rank` must be a constant, `choice` or `grid`: a teacher fleet is trained per rank
before the trials (see tune/teachers.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tagi_ray.config import ConfigError, TagiConfig, config_from_dict

LISTS = ("choice", "grid")
RANGES = ("uniform", "loguniform", "randint")
ENUMERABLE_ONLY = ("lora.rank",)


@dataclass(frozen=True)
class Param:
    key: str  # dotted config key, e.g. "loss.lambda_kl"
    kind: str  # "const" | "choice" | "grid" | "uniform" | "loguniform" | "randint"
    values: tuple  # the values (const: one; ranges: low, high)

    def enumerate(self) -> list | None:
        """Every value this parameter can take, or None for a continuous range."""
        return None if self.kind in RANGES else list(self.values)

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "const":
            return self.values[0]
        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        return getattr(tune, self.kind)(*self.values) if self.kind in RANGES else tune.choice(list(self.values))


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    overrides: dict = field(default_factory=dict)  # {section: {key: value}} applied over the config
    source: str = ""

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def param_space(self) -> dict[str, Any]:
        """Ray Tune's param_space: {dotted key: value or sampler}."""
        return {p.key: p.to_tune() for p in self.params}

    def possible(self, key: str, cfg: TagiConfig) -> list | None:
        """Values `key` can take in a trial (the config's own when not searched); None if continuous."""
        for p in self.params:
            if p.key == key:
                return p.enumerate()
        section, name = key.split(".")
        return [getattr(getattr(cfg, section), name)]

    def has_grid(self) -> bool:
        return any(p.kind == "grid" for p in self.params)


def apply_params(base: dict, params: dict[str, Any]) -> TagiConfig:
    """A validated config: `base` (a config dict) with the dotted `params` set."""
    data = yaml.safe_load(yaml.safe_dump(base))
    for key, value in params.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
    return config_from_dict(data)


def _parse_param(key: str, spec: Any) -> Param:
    if not isinstance(key, str) or key.count(".") != 1:
        raise ConfigError(f"space: {key!r} is not a dotted config key like 'loss.lambda_kl'")
    if key.startswith(("tune.", "ray.")):
        raise ConfigError(f"space: {key!r}: sweep settings and resources are not searched (set them in tune:)")
    if not isinstance(spec, dict):
        return Param(key, "const", (spec,))
    if len(spec) != 1 or next(iter(spec)) not in LISTS + RANGES:
        raise ConfigError(f"space.{key}: expected a value or one of {{{', '.join(LISTS + RANGES)}: ...}}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"space.{key}.{kind}: expected a non-empty list, got {values!r}")
    if kind in RANGES:
        if len(values) != 2:
            raise ConfigError(f"space.{key}.{kind}: expected [low, high], got {values!r}")
        try:
            low, high = (int(v) if kind == "randint" else float(v) for v in values)
        except (TypeError, ValueError):
            raise ConfigError(f"space.{key}.{kind}: [low, high] must be numbers, got {values!r}") from None
        if not low < high or (kind == "loguniform" and low <= 0):
            raise ConfigError(f"space.{key}.{kind}: need {'0 < ' if kind == 'loguniform' else ''}low < high, "
                              f"got {values!r}")
        values = [low, high]
    if key in ENUMERABLE_ONLY and kind in RANGES:
        raise ConfigError(f"space.{key}: use a constant, choice or grid (one teacher fleet is trained per value)")
    return Param(key, kind, tuple(values))


def parse_space(data: Any, base: TagiConfig, source: str = "") -> Space:
    """Validate a parsed space YAML against `base`'s schema; ConfigError names the bad entry."""
    if not isinstance(data, dict) or not isinstance(data.get("space"), dict) or not data["space"]:
        raise ConfigError(f"{source or 'space'}: expected a mapping with a non-empty 'space:' section")
    overrides = {k: v for k, v in data.items() if k != "space"}
    cfg = _overlay(base.to_dict(), overrides)
    config_from_dict(cfg)  # the overrides are valid config sections and values
    params = tuple(_parse_param(k, v) for k, v in data["space"].items())
    for p in params:
        for value in p.values:  # every listed value, or both ends of a range, must be valid
            try:
                apply_params(cfg, {p.key: value})
            except ConfigError as exc:
                raise ConfigError(f"space: {exc}") from None
    return Space(params, overrides, source)


def load_space(path: str | Path, base: TagiConfig) -> Space:
    """Read and validate a space YAML (see the module docstring for the format)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"space file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_space(data, base, str(path))


def _overlay(data: dict, overrides: dict) -> dict:
    out = dict(data)
    for section, values in overrides.items():
        out[section] = {**out[section], **values} if isinstance(values, dict) and isinstance(out.get(section), dict) \
            else values  # not a section mapping: config_from_dict names the error
    return out


def with_overrides(cfg: TagiConfig, space: Space) -> TagiConfig:
    """`cfg` with the space file's config sections applied (validated)."""
    return config_from_dict(_overlay(cfg.to_dict(), space.overrides))
