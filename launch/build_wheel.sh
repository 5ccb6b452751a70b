#!/usr/bin/env bash
# Builds an xlplastic wheel from a checkout's working tree, as it is (uncommitted edits included), without
# writing into the checkout: the package's files are copied to a scratch folder and built there.
#   launch/build_wheel.sh [--dry-run] SRC OUT_DIR
# Writes OUT_DIR/xlplastic-<version>-py3-none-any.whl and OUT_DIR/REVISION (one line: the commit, `-dirty`
# when the working tree differs from it, and the SHA-256 of the wheel), and prints the wheel's path last.
# Used by launch/tpu_pod.sh and launch/slurm.sbatch, so that every worker runs the same code.
set -euo pipefail
dry=0
if [[ ${1:-} == --dry-run ]]; then dry=1; shift; fi
src=${1:?checkout to build from}; out=${2:?output folder}
py=${XLPLASTIC_BUILD_PYTHON:-python3}
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$src/pyproject.toml" | head -n1)
wheel="$out/xlplastic-$version-py3-none-any.whl"
# The package and what its build reads; tracked or new (not ignored) files, as they are on disk.
files=(pyproject.toml README.md xlplastic setup.py setup.cfg MANIFEST.in)
list="git -C $(printf %q "$src") ls-files -z --cached --others --exclude-standard -- ${files[*]}"
build="$py -m pip wheel --no-deps --no-build-isolation --no-index -q -w $(printf %q "$out") SCRATCH"
if ((dry)); then
  echo "mkdir -p $(printf %q "$out")"
  echo "$list | tar -C $(printf %q "$src") --null -T - --ignore-failed-read -cf - | tar -C SCRATCH -xf -"
  echo "$build"
  echo "echo \"\$(git -C $(printf %q "$src") describe --always --dirty --abbrev=40) sha256=\$(sha256sum $wheel)\" > $out/REVISION"
  echo "$wheel"
  exit 0
fi
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# --ignore-failed-read: a tracked file deleted in the working tree is left out, as it is on disk
eval "$list" | tar -C "$src" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$scratch" -xf -
rm -f "$wheel"
"$py" -m pip wheel --no-deps --no-build-isolation --no-index -q -w "$out" "$scratch" >&2
[[ -f $wheel ]] || { echo "build_wheel.sh: pip wheel wrote no $wheel" >&2; exit 1; }
rev=$(git -C "$src" describe --always --dirty --abbrev=40 2>/dev/null || echo unknown)
sum=$(sha256sum "$wheel" | cut -d' ' -f1)
echo "$rev sha256=$sum" > "$out/REVISION"
echo "$wheel"
