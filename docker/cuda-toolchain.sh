#!/usr/bin/env bash
# Install the CUDA toolchain that `cargo build --features cuda` needs, from PyPI wheels (no system
# CUDA, no GPU needed), and print the environment to build with:
#
#   eval "$(docker/cuda-toolchain.sh)"          # once per shell; idempotent
#   cargo build --release --features cuda
#
# Pinned to CUDA 13.0 on purpose: the GPU machines we run on have driver 580 (CUDA 13.0) and their
# PyTorch ships the CUDA 13 libraries (libcublas.so.13, ...), which the binary then links against at
# run time instead of carrying them; PTX from a newer nvcc (13.5) would not load on a 13.0 driver.
# The CUDA 12 nvcc wheels (12.0 to 12.9) carry no `nvcc` driver binary (nor cicc, cudafe++),
# only ptxas and libnvvm: a CUDA 12 build of the kernels needs NVIDIA's toolkit, which is what
# docker/Dockerfile.cuda12 builds on (nvidia/cuda:12.2.2-devel).
#
# CUDA_LIBRARIES=12.2 (default 13.0): link against CUDA 12.2's libraries from their cu12 wheels
# (libcublas.so.12, ...) with cudarc's CUDA 12.2 bindings (CUDARC_CUDA_VERSION=12020), the
# kernels still compiled by the nvcc 13.0 above. That is how CI compile-checks what
# docker/Dockerfile.cuda12 builds: all of the Rust side and the link against 12.2's symbols; not
# the kernels' PTX, which the image compiles with nvcc 12.2. RUSTFLAGS are the same for both
# (the link folder travels in LIBRARY_PATH, which cargo does not fingerprint), so the second
# build in the same target directory recompiles only cudarc and the crates above it.
#
# CUDAFORGE_THREADS: candle-kernels' build (cudaforge) runs nvcc on half the cores unless told
# (one of a 2-core machine's: about 12 minutes here, most of it the quantized-matmul instances).
#
# What the build needs, and which wheel has it:
#   nvcc, cicc, crt headers   nvidia-cuda-nvcc, nvidia-nvvm, nvidia-cuda-crt   (candle-kernels: .cu -> PTX)
#   CUDA runtime headers      nvidia-cuda-runtime, nvidia-cuda-cccl
#   libraries to link         nvidia-cublas, nvidia-curand, nvidia-cuda-nvrtc  (cudarc links them)
# libcuda.so is the driver's and is in no wheel: a stub with the driver API's symbol names (read from
# cudarc's bindings) and the soname libcuda.so.1 satisfies the linker; at run time the real driver
# library is loaded, as with the CUDA toolkit's own stubs/libcuda.so.
set -euo pipefail
PREFIX=${CUDA_TOOLCHAIN_DIR:-$HOME/.cache/sagemaker-hf-server/cuda-13.0}
PY=${PYTHON:-python3}
CUDA=$PREFIX/nvidia/cu13
LIBRARIES=${CUDA_LIBRARIES:-13.0}
case "$LIBRARIES" in
  13.0) LINK=$PREFIX/link ;;
  12.2) LINK=$PREFIX/link-12.2 ;;
  *) echo "CUDA_LIBRARIES='$LIBRARIES': 13.0 or 12.2" >&2; exit 1 ;;
esac
COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}   # PTX for sm_80, JIT-compiled on newer GPUs (A100, L4, H100)

if [ ! -x "$CUDA/bin/nvcc" ] || [ ! -x "$CUDA/nvvm/bin/cicc" ]; then
  mkdir -p "$PREFIX/wheels"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$PREFIX/wheels" \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-nvrtc==13.0.88" \
    "nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.5.25" >&2
  for wheel in "$PREFIX"/wheels/*.whl; do
    "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" "$PREFIX"
  done
  chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/*
fi

# Unversioned names for the linker (-lcublas finds libcublas.so).
mkdir -p "$LINK"
if [ "$LIBRARIES" = 13.0 ]; then
  for lib in cublas cublasLt curand nvrtc cudart; do
    target=$(ls "$CUDA"/lib/lib$lib.so.* | grep -v -e alt -e builtins | head -1)
    ln -sf "$target" "$LINK/lib$lib.so"
  done
else
  # CUDA 12.2 Update 2's libraries (the toolkit nvidia/cuda:12.2.2 images carry).
  CU12=$PREFIX/cu12.2
  if [ ! -d "$CU12/nvidia/cublas/lib" ]; then
    mkdir -p "$CU12/wheels"
    "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$CU12/wheels" \
      "nvidia-cublas-cu12==12.2.5.6" "nvidia-curand-cu12==10.3.3.141" \
      "nvidia-cuda-nvrtc-cu12==12.2.140" "nvidia-cuda-runtime-cu12==12.2.140" >&2
    for wheel in "$CU12"/wheels/*.whl; do
      "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$wheel" "$CU12"
    done
    rm -rf "$CU12/wheels"
  fi
  for lib in cublas/lib/libcublas.so.12 cublas/lib/libcublasLt.so.12 curand/lib/libcurand.so.10 \
             cuda_nvrtc/lib/libnvrtc.so.12 cuda_runtime/lib/libcudart.so.12; do
    name=$(basename "$lib"); name=${name%%.so.*}
    ln -sf "$CU12/nvidia/$lib" "$LINK/$name.so"
  done
fi

# The driver stub: every driver API function cudarc declares, as an empty function (one for
# both library sets: the driver API is the driver's, whatever the toolkit).
STUB=$PREFIX/link
if [ ! -f "$STUB/libcuda.so" ]; then
  mkdir -p "$STUB"
  cudarc=$(cargo metadata --format-version 1 --features cuda 2>/dev/null |
    "$PY" -c "import json, sys; print(next(p['manifest_path'] for p in json.load(sys.stdin)['packages'] if p['name'] == 'cudarc'))")
  bindings=$(dirname "$cudarc")/src/driver/sys/mod.rs
  grep -oE '^\s+fn (cu[A-Za-z0-9_]+)\(' "$bindings" | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u |
    awk 'BEGIN { print "/* libcuda.so stub for linking; the driver provides the real library */" }
         { print "void " $1 "(void) {}" }' > "$STUB/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/cuda_stub.c"
fi
[ "$LINK" = "$STUB" ] || ln -sf "$STUB/libcuda.so" "$LINK/libcuda.so"

# The libraries a CUDA image carries at run time, by their versioned sonames, for
# docker/check-rootfs.sh (CHECK_ROOTFS_CUDA_LIBS): the same NVIDIA builds as the toolkit's.
RUNTIME=$PREFIX/runtime-$LIBRARIES
mkdir -p "$RUNTIME"
if [ "$LIBRARIES" = 13.0 ]; then
  runtime_libs=$(ls "$CUDA"/lib/lib{cudart,cublas,cublasLt,curand,nvrtc,nvrtc-builtins}.so.* 2>/dev/null | grep -v -e alt)
else
  runtime_libs=$(ls "$PREFIX"/cu12.2/nvidia/{cuda_runtime,cublas,curand,cuda_nvrtc}/lib/lib*.so.*)
fi
for lib in $runtime_libs; do ln -sf "$lib" "$RUNTIME/$(basename "$lib")"; done

cat <<EOF
export CUDA_RUNTIME_LIBS=$RUNTIME
export CUDA_ROOT=$CUDA CUDA_HOME=$CUDA CUDA_PATH=$CUDA
export PATH=$CUDA/bin:\$PATH
export CUDA_COMPUTE_CAP=$COMPUTE_CAP
export LIBRARY_PATH=$LINK\${LIBRARY_PATH:+:\$LIBRARY_PATH}
export RUSTFLAGS="-C target-cpu=x86-64-v3"
export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-\$(nproc)}
EOF
if [ "$LIBRARIES" = 12.2 ]; then
  echo "export CUDARC_CUDA_VERSION=12020"
else
  echo "unset CUDARC_CUDA_VERSION"
fi
