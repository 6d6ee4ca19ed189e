"""Bastion releases."""
