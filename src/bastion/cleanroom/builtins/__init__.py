"""The shipped query templates, one per module; importing this package registers them all.

Each module defines one ``QueryTemplate`` and registers it, so a template is added by adding
a module here (every module in the package is imported) and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
