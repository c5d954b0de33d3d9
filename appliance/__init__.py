"""Edge inference appliance for resource-limited clinics."""

__version__ = "0.1.0"
