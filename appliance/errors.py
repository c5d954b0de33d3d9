"""Exceptions shared across rooms. Each carries a message meant for a person."""


class ApplianceError(Exception):
    """Base class: an error the appliance reports plainly instead of a traceback."""


class ConfigError(ApplianceError):
    """The configuration file is wrong; the message names the key and its line."""


class StoreError(ApplianceError):
    """The store cannot do what was asked (schema, disk, integrity)."""


class OutOfSpaceError(StoreError):
    """Free space is below the configured floor, or the disk filled while writing."""


class RejectedInput(ApplianceError):
    """Input that is refused as a whole (unparseable, inconsistent, hostile)."""
