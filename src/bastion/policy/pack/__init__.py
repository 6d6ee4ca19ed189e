"""The shipped Cedar schema and policy pack (data files)."""
