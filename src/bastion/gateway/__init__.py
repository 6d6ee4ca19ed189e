"""Bastion gateway."""
