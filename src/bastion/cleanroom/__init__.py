"""Bastion cleanroom."""
