#!/usr/bin/env bash
# One-time set-up of a fresh machine: system packages + ./.venv with pinned Python packages.
# Idempotent: the Makefile reruns it only when setup.cfg changes.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  # The dpkg lock can be busy for a moment on a fresh machine: retry.
  for i in 1 2 3 4 5; do
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
      return 0
    fi
    echo "apt-get install $* failed (try $i); retrying" >&2
    sleep 5
    apt-get update -qq || true
  done
  echo "could not install $* with apt-get" >&2
  return 1
}

# torchcodec loads FFmpeg's shared libraries; the ffmpeg CLI makes test videos and benchmarks.
if ! command -v ffmpeg >/dev/null || ! ldconfig -p | grep -q 'libavcodec\.so'; then
  if [ "$(id -u)" != 0 ]; then
    echo "ffmpeg (with its shared libraries) is missing; run as root or: sudo apt-get install ffmpeg" >&2
    exit 1
  fi
  apt-get update -qq
  apt_install ffmpeg
fi

# Chromium renders the eval report in its test (headless screenshot).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    apt_install chromium
  else
    echo "note: chromium is missing (the report screenshot test needs it): sudo apt-get install chromium" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip 'setuptools>=64' wheel
.venv/bin/pip install -q -e '.[dev]'
.venv/bin/python -c "import torch, torchcodec, zarr, open_clip, transformers; print('streamfeat: environment ready (torch', torch.__version__, ', torchcodec', torchcodec.__version__, ')')"
