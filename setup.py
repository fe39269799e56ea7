"""Native extensions only; metadata lives in pyproject.toml.

* ``nasdeploy._mixedop``: the CPU kernel (pybind11, C++17, OpenMP where the
  compiler takes ``-fopenmp``). Always built.
* ``nasdeploy._mixedop_cuda``: the CUDA kernel, built only where a CUDA toolkit
  is found (``CUDA_HOME``, ``/usr/local/cuda`` or ``nvcc`` on PATH; never
  ``torch.cuda.is_available()``, which is false on a GPU-less build host).
  A failed CUDA build is a warning, never an error. ``NASDEPLOY_NO_CUDA=1`` skips it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext, has_flag
from setuptools import setup

CSRC = Path("csrc")
# nvcc 13 starts at compute capability 7.5; the last entry also embeds PTX for newer GPUs.
CUDA_ARCHS = ("75", "80", "86", "89", "90")


def find_cuda_home() -> Path | None:
    """The CUDA toolkit root, or None: CUDA_HOME, then /usr/local/cuda, then nvcc on PATH."""
    if os.environ.get("NASDEPLOY_NO_CUDA") == "1":
        return None
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:  # /usr/local/bin/nvcc may be a wrapper script: trust only a real bin/nvcc beside include/
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for c in candidates:
        if c and (Path(c) / "bin" / "nvcc").exists() and (Path(c) / "include" / "cuda_runtime.h").exists():
            return Path(c)
    return None


class BuildExt(build_ext):
    """Adds OpenMP where supported, compiles the .cu with nvcc, and never fails on CUDA."""

    def build_extension(self, ext):
        if ext.name.endswith("_mixedop_cuda"):
            try:
                self._build_cuda(ext)
            except Exception as err:  # noqa: BLE001 - a CUDA failure must never break the install
                msg = f"nasdeploy: skipping the CUDA kernel ({err}); the CPU kernel is still built"
                warnings.warn(msg, stacklevel=2)
            return
        if self.compiler.compiler_type == "msvc":
            ext.extra_compile_args.append("/openmp")
            super().build_extension(ext)
            return
        # CPython's own CFLAGS carry -fwrapv (defined signed overflow), which stops GCC from
        # vectorizing the kernels' index arithmetic: the pools ran 3x slower with it.
        if has_flag(self.compiler, "-fno-wrapv"):
            ext.extra_compile_args.append("-fno-wrapv")
        if has_flag(self.compiler, "-fopenmp"):
            ext.extra_compile_args += ["-fopenmp", "-O3"]
            ext.extra_link_args.append("-fopenmp")
        else:
            msg = "nasdeploy: the compiler does not take -fopenmp; the CPU kernel will run on one thread"
            warnings.warn(msg, stacklevel=2)
        super().build_extension(ext)

    def _build_cuda(self, ext):
        cuda = Path(ext.cuda_home)
        build_temp = Path(self.build_temp)
        build_temp.mkdir(parents=True, exist_ok=True)
        obj = build_temp / "mixed_op_cuda.o"
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
        gencode.append(f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}")
        cmd = [str(cuda / "bin" / "nvcc"), "-c", str(CSRC / "mixed_op_cuda.cu"), "-o", str(obj), "-O3",
               "-std=c++17", "-Xcompiler", "-fPIC", "-I", str(CSRC), *gencode]  # fmt: skip
        print(" ".join(cmd))
        subprocess.run(cmd, check=True)
        ext.extra_objects.append(str(obj))
        super().build_extension(ext)


def extensions() -> list[Pybind11Extension]:
    exts = [
        Pybind11Extension(
            "nasdeploy._mixedop",
            [str(CSRC / "bindings.cpp"), str(CSRC / "mixed_op_cpu.cpp")],
            include_dirs=[str(CSRC)],
            cxx_std=17,
        )
    ]
    cuda = find_cuda_home()
    if cuda is not None:
        lib = cuda / ("lib/x64" if sys.platform == "win32" else "lib64")
        ext = Pybind11Extension(
            "nasdeploy._mixedop_cuda",
            [str(CSRC / "bindings.cpp")],
            include_dirs=[str(CSRC), str(cuda / "include")],
            define_macros=[("NASDEPLOY_CUDA", "1")],
            library_dirs=[str(lib)],
            # static cudart: the module then only needs the driver at run time
            libraries=["cudart_static", "dl", "rt", "pthread"],
            cxx_std=17,
        )
        ext.cuda_home = str(cuda)
        exts.append(ext)
    return exts


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
