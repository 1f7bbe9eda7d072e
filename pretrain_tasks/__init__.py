"""The ERNIE 2.0 pretraining objectives, one module each.

Importing this package imports every module in it, and each task module registers its task with
`@register_task`: a new objective is one new file here. Helpers only tasks use live here too
(`pair_files`: labelled pair files read by discourse relation and IR relevance).
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
