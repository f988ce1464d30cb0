#!/usr/bin/env bash
# Prepares, on a machine with a network, what a GPU machine without one (Python 3.12, x86-64,
# torch + CUDA, numpy, tensorboard, pillow, matplotlib in its image) needs for ops/gpu_run.sh:
# the wheels its image lacks in .whl/, the EGL loader packages in .gl/ (both ignored by git),
# then checks that the tree and both folders stay under 64 MiB, to copy them over as one.
# gpu_run.sh installs them there itself.
#
#   bash ops/gpu_wheels.sh              # then, on the GPU machine: bash ops/gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=3.12
LIMIT_MIB=64
# What the image lacks, at the versions pixelrl's CPU install resolves to (pyproject ranges):
# the five packages, then the needs of theirs that the image lacks too (absl-py, etils,
# numpy, cloudpickle, typing-extensions, imageio, jinja2, packaging, setuptools are there).
PACKAGES=(
  "mujoco==3.11.0" "gymnasium==1.4.0" "gymnasium-robotics==1.4.2" "tyro==1.0.17"
  "stable-baselines3==2.9.2"
  "farama-notifications==0.0.6" "glfw==2.11.0" "pyopengl==3.1.10" "PettingZoo==1.27.0"
  "docstring-parser==0.18.0" "typeguard==4.6.1"
)
rm -rf .whl && mkdir -p .whl .gl
for pkg in "${PACKAGES[@]}"; do
  # --isolated: PyPI itself, not a machine's local index or its constraints.
  python3 -m pip download --isolated -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .whl "$pkg"
done
if ! ls .gl/*.deb > /dev/null 2>&1; then
  opts='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  mkdir -p /tmp/amd64/partial
  # shellcheck disable=SC2086
  apt-get $opts update -qq && (cd .gl && apt-get $opts download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2) \
    || echo "could not fetch the EGL packages; the GPU machine may have them already" >&2
fi
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)
carry_bytes=$(du -cb .whl .gl | tail -n 1 | cut -f1)
total_mib=$(( (tree_bytes + carry_bytes) / 1048576 ))
echo "wheels: $(ls .whl | wc -l) files; tree $(( tree_bytes / 1024 )) KiB + .whl/.gl $(( carry_bytes / 1024 )) KiB = ${total_mib} MiB of ${LIMIT_MIB}"
[ "$total_mib" -lt "$LIMIT_MIB" ] || { echo "over ${LIMIT_MIB} MiB" >&2; exit 1; }
