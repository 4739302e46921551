"""Each step's cache key holds the code it runs, not only its own function.

    @step(cache_policy=code_cache(__name__))

ZenML keys a step on its function's source, its parameters and its inputs. A step here is a thin wrapper whose
work is done in `tuneline/`, so that key misses the code that makes the numbers: after a change to
tuneline/train/sft.py, a re-run would reuse the old adapter and report the old scores. The policy adds a
`cache_func` whose value is a hash of every project file the step's module imports, followed through the imports
(`tuneline.sources.code_key`), read when the key is computed: a change to any of them re-runs the step and,
through its new outputs, what follows; a change elsewhere (an export module, for a training step) leaves it cached.

The files are found from the project root of the code that runs (a step pod has it at another path), not from
ZenML's source root, which can change within a process (`zenml init` after the steps were imported).
"""

import sys

from zenml.config import CachePolicy

from tuneline.paths import PROJECT_ROOT
from tuneline.sources import code_key

# Where the hashed packages are looked up; tests point it at a copy of them.
ROOT = PROJECT_ROOT
# The name each step module gets for its key function: ZenML stores a cache_func as "module.attribute" and loads
# it back by importing the module, which runs its code_cache(__name__) again and so defines the attribute.
KEY_FUNCTION = "_code_key"


def code_cache(module: str) -> CachePolicy:
    """ZenML's default policy plus the hash of the project files `module` runs."""

    def key() -> str:
        return code_key(module, ROOT)  # looked up at call time: a test's monkeypatch of ROOT reaches it

    key.__name__ = key.__qualname__ = KEY_FUNCTION
    key.__module__ = module
    setattr(sys.modules[module], KEY_FUNCTION, key)
    return CachePolicy(cache_func=key)
