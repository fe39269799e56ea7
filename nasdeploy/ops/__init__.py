"""Mixed-op kernel selection: ``auto | fused | reference``, and why a kernel is unavailable.

``fused`` runs the compiled kernels (``nasdeploy._mixedop`` on CPU tensors,
``nasdeploy._mixedop_cuda`` on CUDA tensors) through ``nasdeploy::`` custom ops;
``reference`` is the pure-PyTorch MixedOp; ``auto`` picks fused where it is
built and otherwise falls back to the reference with one warning per process.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType

from ..errors import KernelError

KERNELS = ("auto", "fused", "reference")

_MODULES = {"cpu": "nasdeploy._mixedop", "cuda": "nasdeploy._mixedop_cuda"}
_BUILD_FIX = "reinstall with a C++ compiler available (pip install -e .), or use --kernel reference"


@functools.cache
def _import_backend(device_type: str) -> tuple[ModuleType | None, str | None]:
    """(module, None) if the compiled backend for ``device_type`` imports, else (None, why)."""
    name = _MODULES.get(device_type)
    if name is None:
        return None, f"no fused kernel exists for {device_type!r} tensors"
    try:
        return importlib.import_module(name), None
    except ImportError as err:
        return None, f"{name} is not importable ({err})"


def load_backend(device_type: str) -> ModuleType:
    """The compiled module for tensors on ``device_type``; KernelError if it is not built."""
    module, why = _import_backend(device_type)
    if module is None:
        fix = (
            _BUILD_FIX if device_type != "cuda" else "build where nvcc is found (CUDA_HOME), or use --kernel reference"
        )
        raise KernelError(f"the fused mixed-op kernel is unavailable: {why}", fix)
    return module


@functools.cache
def _warn_fallback(why: str) -> None:
    # functools.cache makes this once per process and reason, whatever the warning filters say.
    warnings.warn(f"using the reference mixed op: {why}", RuntimeWarning, stacklevel=3)


def resolve_kernel(name: str, device: str = "cpu") -> str:
    """Map a requested kernel to the one that will run (``"fused"`` or ``"reference"``).

    Args:
        name: ``"auto"``, ``"fused"`` or ``"reference"``.
        device: the device type the search will run on (``"cpu"`` or ``"cuda"``).

    Raises:
        KernelError: unknown name, or ``"fused"`` requested where it is not built.
    """
    if name not in KERNELS:
        raise KernelError(f"unknown kernel {name!r}", f"use one of {', '.join(KERNELS)}")
    if name == "reference":
        return "reference"
    device_type = str(device).split(":")[0]
    module, why = _import_backend(device_type)
    if module is not None:
        return "fused"
    if name == "fused":
        load_backend(device_type)  # raises with the reason
    _warn_fallback(why)
    return "reference"


def kernel_status() -> dict:
    """Which mixed-op backends are built and importable, why not, and the CPU threads.

    Example:
        >>> kernel_status()["cpu"]["available"]
        True
    """
    import torch

    status: dict = {}
    for device_type, name in _MODULES.items():
        module, why = _import_backend(device_type)
        status[device_type] = {"module": name, "available": module is not None, "reason": why}
    cpu = status["cpu"]
    module, _ = _import_backend("cpu")
    cpu["openmp"] = bool(module is not None and module.openmp)
    cpu["openmp_max_threads"] = module.max_threads() if module is not None else None
    cpu["threads"] = torch.get_num_threads()  # what the kernel is told to use per call
    status["cuda"]["gpu_available"] = torch.cuda.is_available()
    status["auto"] = {d: ("fused" if status[d]["available"] else "reference") for d in _MODULES}
    return status
