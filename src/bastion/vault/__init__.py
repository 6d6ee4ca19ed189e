"""Bastion vault."""
