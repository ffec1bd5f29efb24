"""Device profiles: YAML files listing the memory budget of each device tier.

A profile looks like::

    name: shelf-camera
    description: ...
    tiers:
      - name: shelf-cam-basic
        memory_mb: 32      # MiB the recognition model may use on this tier
        note: ...          # optional

``memory_mb`` is in MiB (2**20 bytes), the unit every footprint is reported in; the
key keeps its name so existing profiles stay valid.

Profiles shipped with the package live in ``skuscale/profiles/`` and are named by
file stem (``smart-cart``, ``shelf-camera``, ``handheld``); any other YAML file can
be given by path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from skuscale.exceptions import SkuscaleError


class ProfileError(SkuscaleError):
    """A device profile is missing or malformed."""


@dataclass(frozen=True)
class DeviceTier:
    """One device tier; ``memory_mb`` is the model's budget in MiB (2**20 bytes), despite its name."""

    name: str
    memory_mb: float
    note: str = ""

    @property
    def memory_bytes(self) -> float:
        """The budget in bytes: ``memory_mb`` MiB."""
        return self.memory_mb * 1024 * 1024


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    tiers: tuple[DeviceTier, ...]
    description: str = ""
    source: str = field(default="", compare=False)

    @property
    def lowest_tier(self) -> DeviceTier:
        """The tier with the least memory for the model (the one that must fit)."""
        return min(self.tiers, key=lambda t: t.memory_mb)


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    folder = resources.files("skuscale") / "profiles"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def parse_profile(doc: object, source: str) -> DeviceProfile:
    """A :class:`DeviceProfile` from parsed YAML; :class:`ProfileError` names what is wrong."""
    if not isinstance(doc, dict):
        raise ProfileError(f"device profile {source}: expected a mapping with 'name' and 'tiers'")
    tiers_doc = doc.get("tiers")
    if not isinstance(tiers_doc, list) or not tiers_doc:
        raise ProfileError(f"device profile {source}: 'tiers' must be a non-empty list")
    tiers = []
    for i, t in enumerate(tiers_doc):
        if not isinstance(t, dict) or "name" not in t or "memory_mb" not in t:
            raise ProfileError(f"device profile {source}: tier {i + 1} needs 'name' and 'memory_mb'")
        mem = t["memory_mb"]
        if isinstance(mem, bool) or not isinstance(mem, int | float) or not mem > 0:
            raise ProfileError(f"device profile {source}: tier {t['name']!r} memory_mb must be a positive number")
        tiers.append(DeviceTier(name=str(t["name"]), memory_mb=float(mem), note=str(t.get("note", ""))))
    return DeviceProfile(name=str(doc.get("name", Path(source).stem)), tiers=tuple(tiers),
                         description=str(doc.get("description", "")), source=source)


def load_profile(name_or_path: str | os.PathLike) -> DeviceProfile:
    """A shipped profile by name, or a YAML file by path."""
    import yaml

    path = Path(name_or_path)
    if path.suffix.lower() in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ProfileError(f"device profile {path} does not exist")
        text, source = path.read_text(encoding="utf-8"), str(path)
    else:
        shipped = shipped_profiles()
        if str(name_or_path) not in shipped:
            raise ProfileError(f"unknown device profile {str(name_or_path)!r}; shipped profiles: "
                               f"{', '.join(shipped)} (or give a path to a YAML file)")
        text = (resources.files("skuscale") / "profiles" / f"{name_or_path}.yaml").read_text(encoding="utf-8")
        source = f"skuscale/profiles/{name_or_path}.yaml"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"device profile {source} is not valid YAML: {exc}") from exc
    return parse_profile(doc, source)
