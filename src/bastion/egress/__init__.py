"""Controlled egress: declared flows of interoperable and aggregate data to outside recipients."""
