#!/usr/bin/env bash
# A wheel of this checkout installed into a fresh virtualenv of another Python (default 3.12), with the newest
# releases the registry serves for it, then the smoke job and emojax.generate run from outside the checkout.
#   bash tools/check_fresh_install.sh [PYTHON_VERSION]
set -euo pipefail
version="${1:-3.12}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
root="${PYENV_ROOT:-$HOME/.pyenv}"
python="$(ls -d "$root"/versions/"$version".*/bin/python 2>/dev/null | sort -V | tail -n 1 || true)"
[[ -x "$python" ]] || { echo "check_fresh_install: no Python $version under pyenv (pyenv install $version)" >&2; exit 2; }
tmp="$(mktemp -d /tmp/emojax_fresh.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip wheel -q --no-deps -w "$tmp/dist" "$repo"
"$py" -m pip install -q "$tmp"/dist/emojax-*.whl
"$py" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|grain|numpy|transformers) '
cd "$tmp"  # no checkout here: configs and assets come from the installed package
"$py" -m emojax.train --config=configs/generator.py:smoke --workdir="$tmp/smoke"
test -f "$tmp/smoke/export/params.safetensors"
"$py" -m emojax.generate --prompt="a star in the center" --valence=2 --arousal=-1 --feedback_rounds=2 \
  --images_per_round=2 --num_steps=2 --batch_size=4 --progress=false --outdir="$tmp/generate"
test -f "$tmp/generate/best.png"
echo "check_fresh_install: Python $("$py" -V | cut -d' ' -f2): wheel installed, smoke job and generate ran from $tmp"
