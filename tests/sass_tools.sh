#!/usr/bin/env bash
# tests/sass_tools.sh - prints the path of a cuobjdump with nvdisasm beside it (cuobjdump
# -sass needs both): the toolkit's when it has them, else NVIDIA's PyPI wheels installed
# once into $BUILD/tools (CUDA 13 toolkits can come without them). Exits 1 with the reason
# on stderr when neither works. Used by tests/check_static.sh and tests/test_sass_model.py.
# Run: CUOBJDUMP=$(tests/sass_tools.sh)   ($BUILD, default build/; $NVCC, default nvcc on
#      PATH or /usr/local/cuda/bin/nvcc)
set -u
NVCC=${NVCC:-$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)}
TOOLS=${BUILD:-build}/tools
usable() { [ -n "$1" ] && [ -x "$1" ] && PATH="$(dirname "$1"):$PATH" command -v nvdisasm >/dev/null 2>&1; }
for c in "$(command -v cuobjdump 2>/dev/null)" "$(dirname "$NVCC")/cuobjdump" "$TOOLS/nvidia/cu13/bin/cuobjdump"; do
  if usable "$c"; then echo "$c"; exit 0; fi
done
mkdir -p "$TOOLS"
python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS" \
  nvidia-cuda-cuobjdump==13.4.92 nvidia-cuda-nvdisasm==13.5.37 >"$TOOLS/pip.log" 2>&1
if usable "$TOOLS/nvidia/cu13/bin/cuobjdump"; then echo "$TOOLS/nvidia/cu13/bin/cuobjdump"; exit 0; fi
echo "no cuobjdump with nvdisasm, and pip could not install them (see $TOOLS/pip.log)" >&2
exit 1
