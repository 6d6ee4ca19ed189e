"""The synthetic social video platform: deterministic, streaming, vectorized."""

from bastion.synth.generate import DATASETS, MANIFEST, SynthResult, generate
from bastion.synth.platform import CHUNK_ROWS, Platform, SynthSpec, arrow_schema, arrow_type
from bastion.synth.writers import Format, flatten_for_csv

__all__ = [
    "CHUNK_ROWS",
    "DATASETS",
    "MANIFEST",
    "Format",
    "Platform",
    "SynthResult",
    "SynthSpec",
    "arrow_schema",
    "arrow_type",
    "flatten_for_csv",
    "generate",
]
