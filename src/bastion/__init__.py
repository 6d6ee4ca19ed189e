"""Bastion: software for a trusted custodian of user data."""

__version__ = "0.1.0"
