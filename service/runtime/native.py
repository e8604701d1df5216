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


def cpuid_kernel() -> str | None:
    """The widest integer kernel this process's CPUID answers for (the C module's, as onnxruntime picks
    its own); None where the C module is not built. An emulator presenting an older CPU (`qemu-x86_64
    -cpu Haswell`) leaves /proc/cpuinfo naming the host's flags, where this names the emulated CPU's."""
    return common_step.projection_kernel()[1] if common_step is not None else None
