#!/usr/bin/env bash
# One-step, idempotent set-up of a development / CI machine (Debian or Raspberry Pi OS):
#   - apt: mosquitto (the tests start their own broker on 127.0.0.1), systemd (systemd-analyze verify),
#     debootstrap + zstd (the cached Debian roots of tests/_debroot.py)
#   - .venv (Python 3.11): edge-ssd with the dev extras (torch CPU, onnx, onnxruntime, LiteRT, pytest ...)
#   - convert/.venv (Python >= 3.12): the pinned onnx2tf toolchain (convert/requirements.txt)
#   - with --with-tf: convert/.venv-tf, onnx2tf's TensorFlow backend (2.7 GB; `edge-ssd convert --backend tf_converter`)
# Re-running it only does what is missing. The device installer is deploy/install.sh, not this.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_TF=0
for a in "$@"; do
  case "$a" in
    --with-tf) WITH_TF=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a (use --with-tf or nothing)" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*"; }

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)  # tests/test_install.py lints deploy/install.sh
# tests/_debroot.py: Debian 12/13 roots for the installer test (tests/test_install_debian.py)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # the Debian package starts a system broker on :1883; the tests run their own on free ports
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
  else
    log "WARNING: please install: ${need_apt[*]} (sudo apt-get install ${need_apt[*]})"
  fi
fi

find_python() {  # find_python MINOR...: print the path of a working python3.MINOR (first found wins)
  local v p
  for v in "$@"; do
    # real binaries first (pyenv shims fail when the version is not selected), then whatever is on PATH
    for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3."$v".*/bin/python3."$v" \
             /root/.pyenv/versions/3."$v".*/bin/python3."$v" /usr/bin/python3."$v" /usr/local/bin/python3."$v" \
             "$(command -v python3."$v" 2>/dev/null)"; do
      if [ -n "$p" ] && [ -x "$p" ] && "$p" -c 'import venv' >/dev/null 2>&1; then
        echo "$p"
        return 0
      fi
    done
  done
  return 1
}

PY=${EDGE_SSD_PYTHON:-$(find_python 11 12 13)}
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.edge-ssd-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing edge-ssd[dev] into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q -U pip
  # torch: the CPU build. 2.13.0 on Python 3.11 comes from a local wheel where one exists; pin it so a
  # range never drags in a multi-GB CUDA build.
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install -q "torch==2.13.0" || \
      .venv/bin/python -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

# conversion toolchain: onnx2tf 2.x needs Python >= 3.12 and pins its own numpy/onnx/opencv-python
CPY=${EDGE_SSD_CONVERT_PYTHON:-$(find_python 12 13 || true)}
cstamp=convert/.venv/.edge-ssd-setup
cwant=$(sha256sum convert/requirements.txt | cut -c1-16)
if [ -z "$CPY" ]; then
  log "WARNING: no Python >= 3.12 found; 'edge-ssd convert' needs one for onnx2tf 2.x"
elif [ "$(cat "$cstamp" 2>/dev/null)" != "$cwant" ]; then
  log "creating convert/.venv (onnx2tf toolchain) with $CPY"
  [ -x convert/.venv/bin/python ] || "$CPY" -m venv convert/.venv
  convert/.venv/bin/python -m pip install -q -U pip
  convert/.venv/bin/python -m pip install -q -r convert/requirements.txt
  echo "$cwant" > "$cstamp"
fi
if [ "$WITH_TF" = 1 ] && [ -n "$CPY" ]; then
  tstamp=convert/.venv-tf/.edge-ssd-setup
  twant=$(sha256sum convert/requirements-tf.txt | cut -c1-16)
  if [ "$(cat "$tstamp" 2>/dev/null)" != "$twant" ]; then
    log "creating convert/.venv-tf (onnx2tf + TensorFlow, about 2.7 GB) with $CPY"
    [ -x convert/.venv-tf/bin/python ] || "$CPY" -m venv convert/.venv-tf
    convert/.venv-tf/bin/python -m pip install -q -U pip
    convert/.venv-tf/bin/python -m pip install -q -r convert/requirements-tf.txt
    echo "$twant" > "$tstamp"
  fi
fi
log "ready: .venv/bin/edge-ssd --help"
