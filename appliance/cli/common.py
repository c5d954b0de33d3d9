"""What several command groups share: the sub-command table's type, finding and loading the
configuration, and the `--models-dir` option.

Without `--config` a command uses `$APPLIANCE_CONFIG`, else the box's
`/etc/appliance/appliance.yaml` when it exists, else the built-in defaults: run in a shell on
the box, `appliance status` reads the box's store, not an empty one in the current folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias

from appliance.config import Settings, load_settings
from appliance.logs import setup_logging
from appliance.paths import resolve_paths
from appliance.runtime.package import DEFAULT_MODELS_DIR

# A string: argparse's action class cannot be subscripted at run time before Python 3.12.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

CONFIG_ENV = "APPLIANCE_CONFIG"
BOX_CONFIG = Path("/etc/appliance/appliance.yaml")
# Below a root (/ on the box, a throwaway folder in tests and `install.sh --root`):
_BOX_CONFIG_PART = Path("etc/appliance/appliance.yaml")
_BOX_DATA_PART = Path("var/lib/appliance")  # systemd's StateDirectory=appliance
_BOX_CACHE_PART = Path("var/cache/appliance")  # CacheDirectory=appliance


def find_config(
    given: Path | None,
    environ: Mapping[str, str] | None = None,
    box_config: Path = BOX_CONFIG,
) -> Path | None:
    """The configuration file a command uses: `--config`, else $APPLIANCE_CONFIG, else the
    box's when it exists, else None (the built-in defaults)."""
    if given is not None:
        return given
    env = os.environ if environ is None else environ
    named = env.get(CONFIG_ENV, "").strip()
    if named:
        return Path(named)
    return box_config if box_config.is_file() else None


def box_root(config: Path | None) -> Path | None:
    """The root folder when `config` is the box's own (ROOT/etc/appliance/appliance.yaml),
    else None."""
    if config is None:
        return None
    absolute = config.absolute()
    if absolute.parts[-len(_BOX_CONFIG_PART.parts) :] != _BOX_CONFIG_PART.parts:
        return None
    return absolute.parents[len(_BOX_CONFIG_PART.parts) - 1]


def with_box_folders(
    settings: Settings, config: Path | None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings whose unset data and cache folders are the box's (/var/lib/appliance,
    /var/cache/appliance below the configuration's root) when the configuration is the box's
    and systemd named none: the same folders as the units', also in a shell."""
    root = box_root(config)
    if root is None:
        return settings
    env = os.environ if environ is None else environ
    storage = settings.storage
    update: dict[str, Path] = {}
    if storage.data_dir is None and not env.get("STATE_DIRECTORY"):
        update["data_dir"] = root / _BOX_DATA_PART
    if storage.cache_dir is None and not env.get("CACHE_DIRECTORY"):
        update["cache_dir"] = root / _BOX_CACHE_PART
    if not update:
        return settings
    return settings.model_copy(update={"storage": storage.model_copy(update=update)})


def settings_from(args: argparse.Namespace, *, announce: bool = True) -> Settings:
    """The settings of the configuration found for `args` (see `find_config`; the path found
    is put back into `args.config`), with logging set up. `announce` says on stderr which
    configuration and data folder are used, in one line."""
    args.config = find_config(args.config)
    settings = with_box_folders(load_settings(args.config), args.config)
    setup_logging(settings.logging.level)
    if announce:
        print(describe(args.config, settings), file=sys.stderr, flush=True)
    return settings


def describe(config: Path | None, settings: Settings) -> str:
    """`appliance: configuration FILE, data FOLDER` (FILE: `built-in defaults` without one)."""
    source = str(config) if config is not None else "built-in defaults"
    return f"appliance: configuration {source}, data {resolve_paths(settings).data_dir}"


def add_models_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models-dir",
        type=Path,
        action="append",
        metavar="DIR",
        help=f"folder of packages (repeatable; default {DEFAULT_MODELS_DIR})",
    )


def models_dirs(args: argparse.Namespace) -> list[Path]:
    return list(args.models_dir or [DEFAULT_MODELS_DIR])
