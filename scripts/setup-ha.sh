#!/usr/bin/env bash
# A Home Assistant core in its own venv, for tests/test_homeassistant_core.py (the integration test that runs
# the daemon against a real Home Assistant). Idempotent and cached: a second run with the same pins does
# nothing. Prints the venv's path on its last line.
#
#   scripts/setup-ha.sh            # -> $EDGE_SSD_HA_VENV, default ~/.cache/edge-ssd/homeassistant-<version>
#
# Home Assistant 2025.4.x is the newest line that installs on Python 3.13.0 (2025.5+ needs 3.13.2); it has
# device-based MQTT discovery (added in 2024.11). The MQTT integration and the recorder need the packages
# pinned below (their manifests' requirements); Home Assistant runs with --skip-pip, so nothing is installed
# at run time.
set -euo pipefail

HA_VERSION=${HA_VERSION:-2025.4.4}
# the requirements (homeassistant/components/*/manifest.json of that version) of the MQTT integration, the
# recorder, and of what Home Assistant always loads: the frontend (without it Home Assistant starts in recovery
# mode) and http's isal
REQS=(paho-mqtt==2.1.0 SQLAlchemy==2.0.39 fnv-hash-fast==1.4.0 psutil-home-assistant==0.0.1
      home-assistant-frontend==20250411.0 isal==1.7.1)
VENV=${EDGE_SSD_HA_VENV:-$HOME/.cache/edge-ssd/homeassistant-$HA_VERSION}
STAMP="$VENV/.edge-ssd-stamp"
WANT="homeassistant==$HA_VERSION ${REQS[*]}"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/hass" ]; then
  echo "$VENV"
  exit 0
fi

find_python() {  # a Python >= 3.13 (Home Assistant 2025.4 requires it)
  local p
  for p in "${HA_PYTHON:-}" python3.13 /root/.pyenv/versions/3.13*/bin/python3 "$HOME"/.pyenv/versions/3.13*/bin/python3; do
    [ -n "$p" ] || continue
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 13))' 2>/dev/null; then
      command -v "$p"
      return 0
    fi
  done
  return 1
}
PY=$(find_python) || {
  echo "setup-ha: no Python 3.13 found (Home Assistant $HA_VERSION needs it): install python3.13 or set HA_PYTHON" >&2
  exit 1
}

echo "setup-ha: building $VENV (homeassistant $HA_VERSION on $("$PY" -V)); a few minutes the first time" >&2
start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "homeassistant==$HA_VERSION" >&2
# the integrations' pins, within Home Assistant's own constraints
CONSTRAINTS=$("$VENV/bin/python" -c 'import homeassistant, os; print(os.path.join(os.path.dirname(homeassistant.__file__), "package_constraints.txt"))')
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" "${REQS[@]}" >&2
"$VENV/bin/python" -c 'import homeassistant.components.mqtt, homeassistant.components.recorder, paho.mqtt, sqlalchemy'
echo "$WANT" > "$STAMP"
echo "setup-ha: done in $(( $(date +%s) - start )) s" >&2
echo "$VENV"
