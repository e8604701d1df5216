"""The beam search's common step, the cache's reorder, the output layer's columns and a shortlisted
step's top-k in C (_common_step.c), or None where the install built no C extension (no compiler at
hand): the numpy code beside each call does the same."""

from types import ModuleType

common_step: ModuleType | None
try:
    from service.runtime import _common_step as common_step
except ImportError:
    common_step = None

NOT_BUILT = "service/runtime/_common_step.c was not built: `pip install -e .` builds it where a C compiler is at hand"
