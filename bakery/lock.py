"""The lock: exact versions and sha256 of every artifact a bake uses (bakery/recipes/bake.lock)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from bakery.errors import BakeError
from talos_os.lib.atomic import write_atomic

LOCK_PATH = Path(__file__).parent / "recipes" / "bake.lock"


@dataclass(frozen=True)
class Pin:
    """One artifact: its version, file name and sha256."""

    version: str
    file: str
    sha256: str


@dataclass
class Lock:
    """Debian packages and wheels by name; plus the kernel flavour -> ABI package mapping."""

    debs: dict[str, Pin] = field(default_factory=dict)
    wheels: dict[str, Pin] = field(default_factory=dict)
    kernels: dict[str, str] = field(default_factory=dict)  # flavour -> linux-image-<abi>-<flavour>

    @classmethod
    def load(cls, path: Path = LOCK_PATH) -> Lock:
        if not path.exists():
            return cls()
        try:
            data = yaml.safe_load(path.read_text()) or {}
            return cls(
                debs={k: Pin(**v) for k, v in (data.get("debs") or {}).items()},
                wheels={k: Pin(**v) for k, v in (data.get("wheels") or {}).items()},
                kernels=dict(data.get("kernels") or {}),
            )
        except (yaml.YAMLError, TypeError, AttributeError) as exc:
            raise BakeError(
                f"lock file {path} is damaged ({exc}): restore it from git or delete it"
            ) from None

    def dump(self) -> str:
        data = {
            "kernels": dict(sorted(self.kernels.items())),
            "debs": {k: asdict(v) for k, v in sorted(self.debs.items())},
            "wheels": {k: asdict(v) for k, v in sorted(self.wheels.items())},
        }
        header = "# Written by talos-bake: exact versions and sha256 of every artifact. Bake with --locked to enforce.\n"
        return header + yaml.safe_dump(data, sort_keys=False)

    def save(self, path: Path = LOCK_PATH) -> None:
        write_atomic(path, self.dump().encode())
