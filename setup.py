"""setup.py - builds the shared libraries of the Python module `ekv` from the headers.

`pip install .` (or `pip install -e .`) runs this through setuptools (pyproject.toml names
it as the build backend); there is no separate make step. The module itself is pure
Python (python/ekv/) over ekv's C ABI, loaded with ctypes, so the libraries are plain
shared objects, not Python extension modules:

    libekv.so       ekv.h (C ABI included), always:
                    $CC -std=c99 -O2 -fPIC -shared -pthread -I. -o libekv.so
                        python/ekv/ekv_library.c -lm
    libekv_cuda.so  ekv.h + ekv_cuda.cuh, where nvcc exists (never required):
                    nvcc -O3 -Xcompiler -fPIC -shared [-arch=...] -I. -o libekv_cuda.so
                        python/ekv/ekv_library.cu -lcublas -Xlinker -rpath,<toolkit lib>

Environment:
    CC               the C compiler (default: cc)
    EKV_CUDA         auto (default): build the CUDA library when nvcc is found, and go on
                     without it (with a warning) when that build fails; 1: require it;
                     0: do not build it
    EKV_NVCC         nvcc to use (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc)
    EKV_CUDA_ARCH    e.g. sm_90 or native (default: native when nvidia-smi lists a GPU,
                     else nvcc's default target, whose PTX newer GPUs compile at load)

What was built, with which commands, goes into ekv/_build.json (ekv.build_info()).
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "python" / "ekv"
HEADERS = [ROOT / "ekv.h", ROOT / "ekv_cuda.cuh"]


def find_nvcc():
    given = os.environ.get("EKV_NVCC")
    if given:
        return given
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def gpu_visible():
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def tool_version(command):
    try:
        done = subprocess.run(command + ["--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return lines[-1 if "nvcc" in command[0] else 0] if lines else None


def run(command, what):
    print("ekv: building", what + ":", " ".join(shlex.quote(word) for word in command), flush=True)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building {what} failed (exit status {done.returncode}):\n"
                           f"{done.stdout}{done.stderr}")


class BuildLibraries(build_ext):
    """Builds libekv.so (and libekv_cuda.so) where setuptools puts the package's
    extension modules: the build tree for a wheel, python/ekv/ for an editable install."""

    def get_ext_filename(self, fullname):
        # plain shared objects named for ctypes, not "<name>.cpython-311-....so"
        *package, name = fullname.split(".")
        return os.path.join(*package, name + ".so")

    def build_extension(self, ext):
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        for header in HEADERS:
            if not header.is_file():
                raise RuntimeError(f"{header} is missing: build ekv from a full checkout")
        info = {"cpu": self.build_cpu(target), "cuda": self.build_cuda(target.parent)}
        (target.parent / "_build.json").write_text(json.dumps(info, indent=2) + "\n")

    def build_cpu(self, target):
        compiler = shlex.split(os.environ.get("CC", "cc"))
        command = compiler + ["-std=c99", "-O2", "-fPIC", "-shared", "-pthread", f"-I{ROOT}",
                              "-o", str(target), str(PACKAGE / "ekv_library.c"), "-lm"]
        run(command, "libekv.so")
        return {"library": target.name, "command": command, "compiler": tool_version(compiler)}

    def build_cuda(self, directory):
        target = directory / "libekv_cuda.so"
        # the build tree is reused between builds: a CUDA library left from an earlier one
        # must not ship with (and be loaded instead of) this build's libekv.so
        target.unlink(missing_ok=True)
        mode = os.environ.get("EKV_CUDA", "auto").lower()
        if mode not in ("auto", "0", "1"):
            raise RuntimeError(f"EKV_CUDA={mode}: allowed auto, 0, 1")
        if mode == "0":
            return {"built": False, "reason": "EKV_CUDA=0"}
        nvcc = find_nvcc()
        if not nvcc:
            if mode == "1":
                raise RuntimeError("EKV_CUDA=1 but no nvcc (set EKV_NVCC or put nvcc on PATH)")
            return {"built": False, "reason": "no nvcc found at install time"}
        toolkit = Path(nvcc).resolve().parent.parent
        libraries = [str(d) for d in (toolkit / "lib64", toolkit / "lib",
                                      toolkit / "targets" / "x86_64-linux" / "lib") if d.is_dir()]
        arch = os.environ.get("EKV_CUDA_ARCH") or ("native" if gpu_visible() else None)
        command = [nvcc, "-O3", "-Xcompiler", "-fPIC", "-shared"] + \
            ([f"-arch={arch}"] if arch else []) + \
            [f"-I{ROOT}", "-o", str(target), str(PACKAGE / "ekv_library.cu"), "-lcublas"] + \
            [f"-Xlinker=-rpath,{d}" for d in libraries]
        try:
            run(command, "libekv_cuda.so")
        except RuntimeError as error:
            if mode == "1":
                raise
            print(f"ekv: warning: {error}\nekv: going on without the CUDA library", flush=True)
            return {"built": False, "reason": str(error).splitlines()[0], "command": command}
        return {"built": True, "library": target.name, "command": command,
                "compiler": tool_version([nvcc])}


def header_version():
    """The version is ekv.h's (EKV_VERSION_STRING), stated there once."""
    for line in (ROOT / "ekv.h").read_text().splitlines():
        if line.startswith("#define EKV_VERSION_STRING"):
            return line.split('"')[1]
    raise RuntimeError("ekv.h has no EKV_VERSION_STRING")


setup(
    version=header_version(),
    ext_modules=[Extension("ekv.libekv", sources=[])],
    cmdclass={"build_ext": BuildLibraries},
)
