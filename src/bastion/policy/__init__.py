"""Bastion policy."""
