"""The bake's options, declared once: one table makes the click options, ``BakeOptions``, the
"bake-only" set, the manifest's ``options`` entry and the keys of a ``--profile`` file.

Every command that bakes (``raw``, ``qcow2`` and the platforms' publishing commands) takes these
options; a profile (``talos-bake raw --profile aws.yaml``) holds the same keys, spelled as the
flags without dashes, so a CI pipeline keeps its bake settings in its repository. A flag given on
the command line wins over the profile. This module imports no platform: the platforms' host halves
import it, and ``bakery.cli`` imports them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
import yaml

from bakery.layout import min_disk_size
from bakery.lock import LOCK_PATH
from bakery.options import BakeOptions
from talos_os import output as out_fmt
from talos_os import plugins

F = TypeVar("F", bound=Callable[..., Any])
_SIZE = re.compile(r"^(\d+)([KMGT]?)i?B?$", re.IGNORECASE)
DEFAULTS = BakeOptions()
# BakeOptions fields that are not command-line options: SOURCE_DATE_EPOCH sets the epoch, and quiet
# is for library callers (tests, benches).
NOT_OPTIONS = frozenset({"epoch", "quiet"})


def parse_size(text: str) -> int:
    """``2G``, ``1536M``, ``2GiB`` -> bytes; a plain number is MiB, as Packer's disk_size is."""
    m = _SIZE.match(str(text).strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a size: use e.g. 2G, 1536M or 2048 (MiB)")
    return int(m.group(1)) << {"": 20, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()]


def _check_disk_size(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Refuse an unreadable or too small --disk-size when the command line is parsed, before any bake."""
    need = min_disk_size()
    if parse_size(value) < need:
        raise click.BadParameter(f"{value} is too small for the partitions: use {-(-need >> 20)}M or more")
    return value


def _check_config_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """The node fetches only http(s) URLs, and the URL is one kernel command-line word."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise click.BadParameter(
            f"{value!r} is not an http:// or https:// URL the node can fetch (e.g. http://10.0.0.1:8080/worker.yaml)"
        )
    return value


def _check_kernel_args(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """talos.platform= and talos.config= have their own options; a second copy would contradict them."""
    for word in value.split():
        key = word.partition("=")[0]
        if key in ("talos.platform", "talos.config", "talos.root"):
            flag = {"talos.platform": "--platform", "talos.config": "--config-url"}.get(key)
            fix = f"use {flag} instead" if flag else "the bake sets it"
            raise click.BadParameter(f"{word} is set by the bake: {fix}")
    return value


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class BakeOption:
    """One row of the table: a ``BakeOptions`` field and how the command line and profiles spell it."""

    target: str | None  # the BakeOptions field it sets; None for an option of the command only
    flag: str
    help: str
    bake_only: bool  # meaningless (and refused) next to --image
    in_manifest: bool = False  # recorded in the manifest's "options"
    to_field: Callable[[Any], Any] = _same  # click's value -> the field's value
    click_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def param(self) -> str:
        """click's parameter name (and the ``kw`` key): the flag with underscores."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def profile_key(self) -> str:
        return self.flag.removeprefix("--")


def _default(name: str) -> Any:
    return getattr(DEFAULTS, name)


TABLE: tuple[BakeOption, ...] = (
    BakeOption("platform", "--platform", "Platform the image is for (talos.platform= on the kernel command line).",
               bake_only=True, in_manifest=True,
               click_kwargs={"type": click.Choice(plugins.names()), "default": _default("platform"),
                             "show_default": True}),
    BakeOption("config_url", "--config-url", "Machine config URL (talos.config=) for the boot entry.",
               bake_only=True, in_manifest=True, click_kwargs={"default": None, "callback": _check_config_url}),
    BakeOption("extra_kernel_args", "--extra-kernel-args", "Extra kernel command-line words.",
               bake_only=True, in_manifest=True,
               click_kwargs={"default": _default("extra_kernel_args"), "callback": _check_kernel_args}),
    BakeOption("disk_size", "--disk-size", "Size of the disk image: 2G, 1536M, or a plain number of MiB (2048).",
               bake_only=True, in_manifest=True, to_field=parse_size,
               click_kwargs={"default": f"{_default('disk_size') >> 30}G", "show_default": True,
                             "callback": _check_disk_size}),
    BakeOption("flavour", "--kernel-flavour", "Debian kernel flavour (default: from the recipe, cloud).",
               bake_only=True, in_manifest=True,
               click_kwargs={"type": click.Choice(["cloud", "generic"]), "default": None}),
    BakeOption("squashfs_level", "--squashfs-level",
               "zstd level of the root filesystem (1-22): lower bakes faster, the default makes the smallest image.",
               bake_only=True, in_manifest=True,
               click_kwargs={"type": click.IntRange(1, 22), "default": _default("squashfs_level"),
                             "show_default": True}),
    BakeOption("out", "--out", "Output directory.", bake_only=False,
               click_kwargs={"type": click.Path(file_okay=False, path_type=Path), "default": Path("_out"),
                             "show_default": True}),
    BakeOption("cache", "--cache", "Cache of downloads and step outputs (verified by sha256).", bake_only=False,
               click_kwargs={"type": click.Path(file_okay=False, path_type=Path),
                             "default": Path.home() / ".cache" / "talos-bake", "show_default": True,
                             "envvar": "TALOS_BAKE_CACHE"}),
    BakeOption("locked", "--locked", "Refuse any artifact not exactly in bake.lock.", bake_only=True,
               in_manifest=True, click_kwargs={"is_flag": True}),
    BakeOption("lock_path", "--lock", "Lock file to use.", bake_only=False,
               click_kwargs={"type": click.Path(dir_okay=False, path_type=Path), "default": LOCK_PATH,
                             "envvar": "TALOS_BAKE_LOCK", "show_default": True}),
    BakeOption(None, "--update-lock", "Write the versions this bake used into the lock (otherwise it is never changed).",
               bake_only=True, click_kwargs={"is_flag": True}),
)  # fmt: skip
BY_PARAM = {option.param: option for option in TABLE}
# Options that only mean something when the command bakes: refused next to --image.
BAKE_ONLY: tuple[str, ...] = tuple(option.param for option in TABLE if option.bake_only)


def options_from(kw: dict[str, Any]) -> BakeOptions:
    """BakeOptions from the click keyword arguments."""
    return BakeOptions(**{o.target: o.to_field(kw[o.param]) for o in TABLE if o.target is not None})


def manifest_options(opts: BakeOptions) -> dict[str, object]:
    """The options a manifest records (those that change what the image is), by flag name."""
    return {o.profile_key: getattr(opts, o.target) for o in TABLE if o.in_manifest and o.target is not None}


def read_profile(path: Path) -> dict[str, Any]:
    """A profile's settings as click defaults (``{param: value}``); a wrong key or file is one sentence."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise click.BadParameter(f"cannot read the profile {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise click.BadParameter(f"the profile {path} is not valid YAML{where}: fix it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"the profile {path} must be a mapping of bake options (e.g. platform: aws)")
    keys = {o.profile_key: o for o in TABLE}
    unknown = sorted(str(k) for k in data if k not in keys)
    if unknown:
        raise click.BadParameter(
            f"the profile {path} sets {', '.join(unknown)}, which is not a bake option: use {', '.join(keys)}"
        )
    return {keys[key].param: value for key, value in data.items()}


def _apply_profile(ctx: click.Context, _param: click.Parameter, value: Path | None) -> Path | None:
    """Eager, on the ``talos-bake`` group: the profile's values become the defaults of whichever
    command runs (click hands each command ``default_map[its name]``)."""
    if value is not None:
        settings = read_profile(value)
        group = ctx.command
        names = group.list_commands(ctx) if isinstance(group, click.Group) else []
        ctx.default_map = {**(ctx.default_map or {}), **{name: dict(settings) for name in names}}
    return value


def profile_option() -> Callable[[F], F]:
    """``talos-bake --profile aws.yaml raw``: bake settings kept in a file (a CI pipeline's repository)."""
    return click.option(
        "--profile",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        is_eager=True,
        expose_value=False,
        callback=_apply_profile,
        help="YAML file of bake options (keys are the flags without dashes); flags given on the command win.",
    )


def bake_options(func: F) -> F:
    """The options every command that bakes an image takes, ``-o/--output`` included."""
    options = [click.option(o.flag, o.param, help=o.help, **o.click_kwargs) for o in TABLE]
    options.append(out_fmt.output_option())  # every command that bakes prints what it made
    for option in reversed(options):
        func = option(func)
    return func


def check_table() -> None:
    """Every BakeOptions field is an option or deliberately not one (a test calls this)."""
    covered = {o.target for o in TABLE if o.target is not None}
    every = {f.name for f in fields(BakeOptions)}
    if covered | NOT_OPTIONS != every:
        raise AssertionError(
            f"bake options table and BakeOptions differ: {sorted(every ^ (covered | NOT_OPTIONS))}"
        )
