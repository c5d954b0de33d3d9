"""Errors of the runtime room; each message is meant for the admin who has to fix the cause."""

from __future__ import annotations

from appliance.errors import ApplianceError


class PackageError(ApplianceError):
    """A model package is refused: the message names the file or manifest field at fault."""


class ManifestError(PackageError):
    """manifest.yaml is not valid format 1: the message names the field and its line."""


class BackendError(ApplianceError):
    """An inference backend cannot load or run a model; nothing falls back to another one."""


class GraphError(BackendError):
    """The backend works but cannot load or run this package's graph (e.g. an opset it does
    not know): the package is at fault, not the backend, so only it is refused."""


class InferenceError(ApplianceError):
    """An image cannot be fed to a model, or the model answered with the wrong shapes."""


class InputError(ApplianceError):
    """An image that cannot be read or fed to a model; the message says why."""
