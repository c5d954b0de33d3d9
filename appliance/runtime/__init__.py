"""The runtime capability room: model packages, preprocessing, backends and findings.

A model is a verified package (`load_package`) run by one backend (`Model.open`); `infer`
turns images into findings with provenance and timing. Names below are imported from their
modules on first use, so registering the CLI commands (`appliance.cli`) stays cheap;
backends import their inference library only when loaded, and `runtime.graph` and
`runtime.importing` import `onnx` only when used. The command handlers themselves live in
`appliance.cli`: this room exports functions and results, never argparse.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.runtime.backends import BackendOptions
    from appliance.runtime.engine import Model
    from appliance.runtime.errors import (
        BackendError,
        InferenceError,
        InputError,
        ManifestError,
        PackageError,
    )
    from appliance.runtime.findings import (
        LabelFinding,
        MaskFinding,
        ModelResult,
        Provenance,
        Timing,
    )
    from appliance.runtime.manifest import Manifest, load_manifest, parse_manifest
    from appliance.runtime.package import (
        FoundPackage,
        ModelPackage,
        find_packages,
        load_package,
        seal_package,
    )
    from appliance.runtime.preprocess import Geometry, Prepared, prepare, read_picture
    from appliance.runtime.routing import ImageTags, Route, route

_MODULES = {
    "backends": ("BackendOptions",),
    "engine": ("Model",),
    "errors": ("BackendError", "InferenceError", "InputError", "ManifestError", "PackageError"),
    "findings": ("LabelFinding", "MaskFinding", "ModelResult", "Provenance", "Timing"),
    "manifest": ("Manifest", "load_manifest", "parse_manifest"),
    "package": ("FoundPackage", "ModelPackage", "find_packages", "load_package", "seal_package"),
    "preprocess": ("Geometry", "Prepared", "prepare", "read_picture"),
    "routing": ("ImageTags", "Route", "route"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "BackendError",
    "BackendOptions",
    "FoundPackage",
    "Geometry",
    "ImageTags",
    "InferenceError",
    "InputError",
    "LabelFinding",
    "Manifest",
    "ManifestError",
    "MaskFinding",
    "Model",
    "ModelPackage",
    "ModelResult",
    "PackageError",
    "Prepared",
    "Provenance",
    "Route",
    "Timing",
    "find_packages",
    "load_manifest",
    "load_package",
    "parse_manifest",
    "prepare",
    "read_picture",
    "route",
    "seal_package",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
