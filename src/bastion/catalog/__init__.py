"""Bastion catalog."""
