#!/usr/bin/env bash
# Prepares, on a machine with a network, what a GPU machine without one needs to run
# benchmarks/cuda_suite.sh: wheels of pixelrl's dependencies missing from a CUDA PyTorch image
# (Python 3.12, x86_64) in .whl/, and the EGL loader packages in .gl/. Both folders are
# ignored by git. Then, on the GPU machine, from the repository root:
#
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site; benchmarks/cuda_suite.sh OUT --stage bench
#
# usage: benchmarks/gpu_wheels.sh [PYTHON_VERSION (default 3.12)]
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${1:-3.12}
mkdir -p .whl .gl
# What the image lacks (torch, numpy, tensorboard, pillow, matplotlib, pandas are there).
PACKAGES=(
  "mujoco==3.3.7" "gymnasium==1.2.2" "gymnasium-robotics==1.4.2" "tyro==0.9.35"
  "stable-baselines3==2.7.1" "farama-notifications==0.0.4" "glfw==2.10.0" "pyopengl==3.1.10"
  "docstring-parser==0.17.0" "typeguard==4.4.4" "shtab==1.7.2" "cloudpickle==3.1.1"
  "PettingZoo==1.25.0" "imageio==2.37.0"
)
for pkg in "${PACKAGES[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .whl "$pkg"
done
opts='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
mkdir -p /tmp/amd64/partial
# shellcheck disable=SC2086
apt-get $opts update -qq && (cd .gl && apt-get $opts download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2) \
  || echo "could not fetch the EGL packages; the GPU machine may have them already" >&2
du -sh .whl .gl
