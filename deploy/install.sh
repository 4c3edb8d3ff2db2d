#!/usr/bin/env bash
# edge-ssd device installer: Raspberry Pi OS (Bookworm / Trixie, 64-bit) and any Debian.
#
#   sudo deploy/install.sh                    install from this checkout, enable and start edge-ssd.service
#   sudo deploy/install.sh --coral            ... plus the Coral Edge TPU runtime (libedgetpu1-std) and udev rules;
#                                             then probes the delegate and says which libedgetpu to get if it crashes
#   sudo deploy/install.sh --coral --libedgetpu-deb FILE.deb   install that libedgetpu (built for your TFLite)
#   sudo deploy/install.sh --source X.whl     install a wheel (or any pip spec) instead of the checkout
#   deploy/install.sh --dry-run               print every action, change nothing
#   deploy/install.sh --root /tmp/r           write every file under /tmp/r (etc/, opt/, var/lib/); commands that
#                                             touch the live system (apt-get, useradd, systemctl start) are printed
#   sudo deploy/install.sh --uninstall [--purge]
#
# Idempotent: a second run compares every file, venv and package stamp and changes nothing when all is in
# place (it says so). The user config /etc/edge-ssd/config.yaml is written from deploy/config.example.yaml
# only when absent and never overwritten. Run with --help for all options.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UNIT_TEMPLATES=("systemd/edge-ssd.service" "systemd/edge-ssd@.service")
CONFIG_TEMPLATE="deploy/config.example.yaml"
NUMPY1_CONSTRAINTS="deploy/constraints-numpy1.txt"
DEFAULT_PREFIX=/opt/edge-ssd
SERVICE=edge-ssd.service
SVC_USER=edge-ssd
MIN_PY_MINOR=11
MIN_FREE_MB=600
CORAL_RULES=etc/udev/rules.d/99-edge-ssd-coral.rules

ROOT=/
PREFIX=$DEFAULT_PREFIX
SOURCE=""
PYTHON=""
DRY_RUN=0
NO_START=0
CORAL=0
LIBEDGETPU_DEB=""
UNINSTALL=0
PURGE=0
SKIP_PIP=0
NO_APT=0
SKIP_CHECKS=0
REINSTALL=0
PIP_ARGS=()

usage() {
  cat <<'EOF'
Usage: deploy/install.sh [options]

Installs edge-ssd as a systemd service: apt dependencies, a venv (--system-site-packages, so picamera2 and
libcamera from apt are importable), the system user edge-ssd, /etc/edge-ssd/config.yaml (only if absent),
/var/lib/edge-ssd, and the systemd unit(s).

Options:
  --prefix DIR      install prefix; the venv goes to DIR/venv (default /opt/edge-ssd)
  --source SPEC     what pip installs: a checkout directory, a wheel, or a pip spec such as
                    'edge-ssd==0.1.0' (default: this checkout)
  --python PY       interpreter for the venv (default: python3; must be >= 3.11)
  --pip-arg ARG     extra argument for 'pip install' (repeatable), e.g. --pip-arg --no-index
  --skip-pip        create the venv but do not pip install edge-ssd (tests, or an already populated venv)
  --reinstall       pip install even when the package stamp says it is up to date
  --coral           Coral Edge TPU: install libedgetpu1-std (or say how to add its apt repo) and udev rules,
                    then probe the delegate with the venv's TFLite runtime (in a child process) and say which
                    libedgetpu to install when it crashes (Coral's 2021 build only works with TFLite <= 2.11)
  --libedgetpu-deb FILE
                    with --coral: install this libedgetpu .deb instead of Coral's libedgetpu1-std (one built for
                    the installed TFLite runtime, e.g. from github.com/feranick/libedgetpu/releases)
  --no-start        enable the service but do not start (or restart) it
  --no-apt          do not run apt-get (dependencies are installed already)
  --skip-checks     skip the 64-bit / Python / disk space checks
  --root DIR        write every path under DIR (a staging root: DIR/etc, DIR/opt, DIR/var/lib); commands that
                    change the live system (apt-get, useradd, systemctl start/daemon-reload, udevadm) are
                    printed, not run. Unit enabling uses 'systemctl --root DIR' (file-level symlinks only).
  --dry-run         print every action that would be taken and change nothing
  --uninstall       stop and disable the service, remove the device from Home Assistant (edge-ssd ha
                    remove), the units, the venv and the user; keeps /etc/edge-ssd and /var/lib/edge-ssd
  --purge           with --uninstall: also remove /etc/edge-ssd and /var/lib/edge-ssd
  -h, --help        this help
EOF
}

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
need_arg() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "option $1 needs a value (see --help)"; fi; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) need_arg "$@"; PREFIX=$2; shift 2 ;;
    --source) need_arg "$@"; SOURCE=$2; shift 2 ;;
    --python) need_arg "$@"; PYTHON=$2; shift 2 ;;
    --pip-arg) need_arg "$@"; PIP_ARGS+=("$2"); shift 2 ;;
    --root) need_arg "$@"; ROOT=$2; shift 2 ;;
    --skip-pip) SKIP_PIP=1; shift ;;
    --reinstall) REINSTALL=1; shift ;;
    --coral) CORAL=1; shift ;;
    --libedgetpu-deb) need_arg "$@"; LIBEDGETPU_DEB=$2; CORAL=1; shift 2 ;;
    --no-start) NO_START=1; shift ;;
    --no-apt) NO_APT=1; shift ;;
    --skip-checks) SKIP_CHECKS=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

[[ "$PREFIX" =~ ^/[A-Za-z0-9._/+-]*$ ]] ||
  die "--prefix must be an absolute path of letters, digits and ._+-/ (got '$PREFIX')"
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only goes with --uninstall"
if [ -n "$LIBEDGETPU_DEB" ] && { [ ! -f "$LIBEDGETPU_DEB" ] || [[ "$LIBEDGETPU_DEB" != *.deb ]]; }; then
  die "--libedgetpu-deb $LIBEDGETPU_DEB: not a .deb file (download the libedgetpu1-std .deb for your TFLite runtime)"
fi
PREFIX=${PREFIX%/}
[ -n "$PREFIX" ] || die "--prefix / is not allowed; use a directory such as /opt/edge-ssd"
if [ "$ROOT" != / ]; then
  case "$ROOT" in /*) ;; *) ROOT=$PWD/$ROOT ;; esac
  if [ "$DRY_RUN" = 0 ]; then mkdir -p -- "$ROOT" || die "cannot create --root $ROOT"; fi
  ROOT=$(realpath -m -- "$ROOT")
  [ "$ROOT" != / ] || ROOT=/
fi
LIVE=0; [ "$ROOT" = / ] && LIVE=1

# path as seen by the target system -> path written by this script
r() { if [ "$LIVE" = 1 ]; then printf '%s' "$1"; else printf '%s%s' "$ROOT" "$1"; fi; }

VENV=$PREFIX/venv
CONF_DIR=/etc/edge-ssd
STATE_DIR=/var/lib/edge-ssd
UNIT_DIR=/etc/systemd/system
STAMP_NAME=.edge-ssd-install

WORK=$(mktemp -d)
trap 'rm -rf -- "$WORK"' EXIT
CHANGES=0
SKIPPED=0
say() { printf '%s\n' "$*"; }
ok() { printf '  [ok]      %s\n' "$*"; }
warn() { printf '  [warn]    %s\n' "$*" >&2; }
change() { CHANGES=$((CHANGES + 1)); if [ "$DRY_RUN" = 1 ]; then printf '  [dry-run] would %s\n' "$*";
  else printf '  [change]  %s\n' "$*"; fi; }

# do_run DESC CMD...: a change inside the target root (files); not run under --dry-run
do_run() { local desc=$1; shift; change "$desc"; if [ "$DRY_RUN" = 0 ]; then "$@"; fi; }
# sys_run DESC CMD...: a command that changes the live system: printed (not run) under --root or --dry-run
sys_run() {
  local desc=$1; shift
  if [ "$DRY_RUN" = 1 ]; then change "$desc: $*"
  elif [ "$LIVE" = 0 ]; then SKIPPED=$((SKIPPED + 1)); printf '  [skip]    %s: %s  (not run: --root %s)\n' "$desc" "$*" "$ROOT"
  else change "$desc"; "$@"; fi
}

# svc_run DESC CMD...: a systemctl command that needs a running systemd (daemon-reload, start, restart): on a
# live system without one (a chroot, a container, an image build) it is printed, not run; the unit files and
# the enable symlinks work without it, so the service starts at the next boot
SYSTEMD_UP=0; [ -d /run/systemd/system ] && SYSTEMD_UP=1
svc_run() {
  if [ "$LIVE" = 1 ] && [ "$SYSTEMD_UP" = 0 ] && [ "$DRY_RUN" = 0 ]; then
    local desc=$1; shift
    SKIPPED=$((SKIPPED + 1)); printf '  [skip]    %s: %s  (systemd is not running here: chroot or container)\n' "$desc" "$*"
    return 0
  fi
  sys_run "$@"
}

# ---------------------------------------------------------------------------------------------------- checks
find_python() {
  local p
  if [ -n "$PYTHON" ]; then command -v "$PYTHON" >/dev/null 2>&1 || die "--python $PYTHON: not found"
    command -v "$PYTHON"; return; fi
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null 2>&1; then command -v "$p"; return; fi
  done
  die "python3 not found; install it: sudo apt-get install python3 python3-venv"
}

check_system() {
  local arch bits ver avail base
  arch=$(uname -m)
  bits=$(getconf LONG_BIT 2>/dev/null || echo 64)
  if command -v dpkg >/dev/null 2>&1; then
    case "$(dpkg --print-architecture)" in
      armhf|armel|i386) die "32-bit userland ($(dpkg --print-architecture)) on $arch: ai-edge-litert has no wheels for it; flash Raspberry Pi OS (64-bit) / a 64-bit Debian" ;;
    esac
  fi
  [ "$bits" = 64 ] || die "32-bit system ($arch, LONG_BIT=$bits): ai-edge-litert needs a 64-bit OS; flash Raspberry Pi OS (64-bit)"
  ok "64-bit system ($arch)"
  PY=$(find_python)
  ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  "$PY" -c "import sys; sys.exit(sys.version_info < (3, $MIN_PY_MINOR))" ||
    die "$PY is Python $ver; edge-ssd needs >= 3.$MIN_PY_MINOR (Bookworm ships 3.11); pass --python python3.11"
  ok "Python $ver ($PY)"
  base=$(r "$PREFIX")
  while [ ! -d "$base" ]; do base=$(dirname "$base"); done
  avail=$(df -Pm "$base" | awk 'NR==2 {print $4}')
  [ "${avail:-0}" -ge "$MIN_FREE_MB" ] ||
    die "only ${avail} MB free on $base; the venv needs about $MIN_FREE_MB MB: free some space (sudo apt-get clean)"
  ok "${avail} MB free on $base"
}

# ------------------------------------------------------------------------------------------------------ apt
APT_POLICY=""
apt_has() {  # apt_has PKG: true when apt knows a candidate version for PKG (one apt-cache call for all)
  local cand
  command -v apt-cache >/dev/null 2>&1 || return 1
  if [ -z "$APT_POLICY" ]; then
    APT_POLICY=$(apt-cache policy python3-picamera2 libgomp1 libedgetpu1-std 2>/dev/null || true)
    APT_POLICY=${APT_POLICY:-none}
  fi
  case "$1" in python3-picamera2|libgomp1|libedgetpu1-std) ;; *) APT_POLICY+=$'\n'$(apt-cache policy "$1" 2>/dev/null) ;; esac
  cand=$(printf '%s\n' "$APT_POLICY" | awk -v p="$1:" '$0 == p {f = 1; next} /^[^ ]/ {f = 0} f && /Candidate:/ {print $2; exit}')
  [ -n "$cand" ] && [ "$cand" != "(none)" ]
}
dpkg_has() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_install() {
  # procps: /bin/kill for the unit's ExecReload (absent from minimal images)
  local pkgs=(python3-venv python3-pip mosquitto-clients ca-certificates procps) missing=() p
  if [ "$NO_APT" = 1 ]; then ok "apt: skipped (--no-apt)"; return; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    warn "apt-get not found: install python3-venv, python3-pip and mosquitto-clients yourself (or pass --no-apt)"
    return
  fi
  # picamera2 / libcamera only come from apt (Raspberry Pi OS); opencv-python-headless needs no libGL
  apt_has python3-picamera2 && pkgs+=(python3-picamera2)
  apt_has libgomp1 && pkgs+=(libgomp1)
  [ "$CORAL" = 1 ] && [ -z "$LIBEDGETPU_DEB" ] && apt_has libedgetpu1-std && pkgs+=(libedgetpu1-std)
  for p in "${pkgs[@]}"; do
    if [ "$LIVE" = 0 ] || ! dpkg_has "$p"; then missing+=("$p"); fi
  done
  if [ ${#missing[@]} -eq 0 ]; then ok "apt packages installed: ${pkgs[*]}"; return; fi
  # a fresh image's package lists are empty or stale: update them first, or the install fails with 404s
  sys_run "apt-get update" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  sys_run "apt-get install ${missing[*]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

coral_hint() {
  if [ -n "$LIBEDGETPU_DEB" ]; then return; fi
  if apt_has libedgetpu1-std || { [ "$LIVE" = 1 ] && dpkg_has libedgetpu1-std; }; then return; fi
  warn "libedgetpu1-std is not in your apt sources. Add Coral's repository, then re-run with --coral:"
  warn "  echo 'deb [signed-by=/usr/share/keyrings/coral-edgetpu.gpg] https://packages.cloud.google.com/apt coral-edgetpu-stable main' | sudo tee /etc/apt/sources.list.d/coral-edgetpu.list"
  warn "  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo gpg --dearmor -o /usr/share/keyrings/coral-edgetpu.gpg"
  warn "  sudo apt-get update"
}

# ---------------------------------------------------------------------------------------------------- files
ensure_dir() {  # ensure_dir PATH MODE
  local p; p=$(r "$1")
  if [ -d "$p" ]; then ok "directory $1"; return; fi
  do_run "create directory $1 (mode $2)" install -d -m "$2" -- "$p"
}

# install_file SRC DEST MODE: write SRC to DEST when absent or different (content or mode)
install_file() {
  local src=$1 dest=$2 mode=$3 p cur
  p=$(r "$dest")
  if [ -f "$p" ] && cmp -s -- "$src" "$p"; then
    cur=$(stat -c %a -- "$p")
    if [ "$cur" = "$mode" ]; then ok "$dest up to date"; return 0; fi
    do_run "chmod $mode $dest" chmod "$mode" -- "$p"; return 0
  fi
  local what="install"; [ -e "$p" ] && what="update"
  do_run "$what $dest" install -D -m "$mode" -- "$src" "$p"
  return 0
}

# unit template with the default venv/config paths rewritten for --prefix
render_unit() {  # render_unit TEMPLATE OUT (one pass: /opt/edge-ssd/venv becomes $PREFIX/venv)
  sed -e "s#$DEFAULT_PREFIX\\b#$PREFIX#g" -- "$1" > "$2"
}

user_exists() {
  if [ "$LIVE" = 1 ]; then getent passwd "$SVC_USER" >/dev/null
  else [ -f "$ROOT/etc/passwd" ] && grep -q "^$SVC_USER:" "$ROOT/etc/passwd"; fi
}
group_exists() {
  if [ "$LIVE" = 1 ]; then getent group "$1" >/dev/null
  else [ -f "$ROOT/etc/group" ] && grep -q "^$1:" "$ROOT/etc/group"; fi
}

ensure_user() {
  local groups=() g have
  for g in video plugdev render gpio apex; do
    if group_exists "$g" || { [ "$LIVE" = 0 ] && getent group "$g" >/dev/null; }; then groups+=("$g"); fi
  done
  local glist; glist=$(IFS=,; printf '%s' "${groups[*]}")
  if ! user_exists; then
    sys_run "create system user $SVC_USER (groups: ${glist:-none})" useradd --system --user-group \
      --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin ${glist:+--groups "$glist"} "$SVC_USER"
    return
  fi
  have=" $(id -nG "$SVC_USER" 2>/dev/null || true) "
  local add=()
  for g in "${groups[@]}"; do [[ "$have" == *" $g "* ]] || add+=("$g"); done
  if [ ${#add[@]} -eq 0 ]; then ok "user $SVC_USER (groups: ${glist:-none})"; return; fi
  glist=$(IFS=,; printf '%s' "${add[*]}")
  sys_run "add $SVC_USER to groups $glist" usermod --append --groups "$glist" "$SVC_USER"
}

chown_svc() {  # chown_svc OWNER PATH(target view): the live system only, and only when different
  local owner=$1 p; p=$(r "$2")
  if [ "$LIVE" = 0 ]; then
    SKIPPED=$((SKIPPED + 1)); printf '  [skip]    chown %s %s  (not run: --root %s)\n' "$owner" "$2" "$ROOT"
  elif [ ! -e "$p" ] || [ "$(stat -c %U:%G -- "$p")" != "$owner" ]; then
    do_run "chown $owner $2" chown "$owner" -- "$p"
  fi
}

# -------------------------------------------------------------------------------------------- venv + package
source_id() {  # a stamp of what pip would install: path + content hash, or the spec itself
  local s=$1
  if [ -d "$s" ]; then
    (cd "$s" && { if [ -d edge_ssd ]; then find edge_ssd/ -type f \( -name '*.py' -o -name '*.json' \
      -o -name '*.txt' \); fi; for f in pyproject.toml setup.cfg setup.py; do [ ! -f "$f" ] || echo "$f"; done; } |
      LC_ALL=C sort | xargs -r sha256sum | sha256sum | cut -c1-32 | sed "s#^#dir:$s:#")
  elif [ -f "$s" ]; then
    printf 'file:%s:%s' "$s" "$(sha256sum -- "$s" | cut -c1-32)"
  else
    printf 'spec:%s' "$s"
  fi
}

ensure_venv() {
  local v; v=$(r "$VENV")
  if [ -x "$v/bin/python" ] && grep -q '^include-system-site-packages = true' "$v/pyvenv.cfg" 2>/dev/null; then
    ok "venv $VENV (--system-site-packages)"
  else
    if [ -e "$v/pyvenv.cfg" ]; then warn "$VENV exists without system site packages: recreating it"; fi
    # --skip-pip: no pip in the venv either (fast); a later run without it bootstraps pip with ensurepip
    local nopip=(); if [ "$SKIP_PIP" = 1 ]; then nopip=(--without-pip); fi
    do_run "create venv $VENV (--system-site-packages, $("$PY" -V 2>&1))" "$PY" -m venv --clear \
      --system-site-packages "${nopip[@]}" "$v"
  fi
  if [ "$SKIP_PIP" = 1 ]; then ok "pip install skipped (--skip-pip)"; return; fi
  if [ -x "$v/bin/python" ] && ! "$v/bin/python" -m pip --version >/dev/null 2>&1; then
    do_run "bootstrap pip in $VENV" "$v/bin/python" -m ensurepip --default-pip
  fi
  local src=${SOURCE:-$REPO} want have constraint=""
  if [ -d "$src" ]; then src=$(cd "$src" && pwd); fi
  want="$(source_id "$src") ${PIP_ARGS[*]:-}"
  have=$(cat "$v/$STAMP_NAME" 2>/dev/null || true)
  if [ "$REINSTALL" = 0 ] && [ "$have" = "$want" ]; then ok "edge-ssd package up to date ($src)"; return; fi
  # picamera2's apt-built modules (simplejpeg) are compiled against the system numpy: keep numpy < 2 in the
  # venv when the system numpy is 1.x, or 'import picamera2' fails with "numpy.dtype size changed"
  # (deploy/constraints-numpy1.txt: numpy < 2 and the opencv / ml_dtypes releases that still support it)
  if "$PY" -c 'import numpy, sys; sys.exit(int(numpy.__version__.split(".")[0]) >= 2)' 2>/dev/null; then
    install_file "$REPO/$NUMPY1_CONSTRAINTS" "$PREFIX/constraints.txt" 644
    constraint=$(r "$PREFIX")/constraints.txt
  fi
  do_run "pip install $src into $VENV" "$v/bin/python" -m pip install --disable-pip-version-check -q \
    ${constraint:+--constraint "$constraint"} "${PIP_ARGS[@]}" "$src"
  if [ "$DRY_RUN" = 0 ]; then printf '%s' "$want" > "$v/$STAMP_NAME"; fi
}

# the units' Documentation=file:///opt/edge-ssd/docs/... points here
install_docs() {
  local f
  [ -d "$REPO/docs" ] || return 0
  for f in "$REPO"/docs/*.md; do
    [ -f "$f" ] || continue
    install_file "$f" "$PREFIX/docs/$(basename "$f")" 644
  done
}

# -------------------------------------------------------------------------------------------------- systemd
UNITS_CHANGED=0
install_units() {
  local t name tmp=$WORK found=0
  for t in "${UNIT_TEMPLATES[@]}"; do
    [ -f "$REPO/$t" ] || continue
    found=1
    name=$(basename "$t")
    render_unit "$REPO/$t" "$tmp/$name"
    local before=$CHANGES
    install_file "$tmp/$name" "$UNIT_DIR/$name" 644
    [ "$CHANGES" = "$before" ] || UNITS_CHANGED=1
  done
  [ "$found" = 1 ] || die "no unit template found: $REPO/${UNIT_TEMPLATES[0]} is missing (incomplete checkout?)"
  if [ "$UNITS_CHANGED" = 1 ]; then svc_run "reload systemd" systemctl daemon-reload; fi
}

enable_service() {
  local state
  if [ "$LIVE" = 1 ]; then state=$(systemctl is-enabled "$SERVICE" 2>/dev/null || true)
  else state=$(systemctl --root="$ROOT" is-enabled "$SERVICE" 2>/dev/null || true); fi
  if [ "$state" = enabled ]; then ok "$SERVICE enabled"
  elif [ "$LIVE" = 1 ]; then do_run "enable $SERVICE" systemctl enable --quiet "$SERVICE"
  else do_run "enable $SERVICE (systemctl --root)" systemctl --root="$ROOT" enable --quiet "$SERVICE"; fi
}

start_service() {
  if [ "$NO_START" = 1 ]; then ok "not starting $SERVICE (--no-start)"; return; fi
  # the template points at a camera and a model that may not exist here: starting it would only crash-loop
  if cmp -s -- "$REPO/$CONFIG_TEMPLATE" "$(r "$CONF_DIR/config.yaml")"; then
    warn "not starting $SERVICE: $CONF_DIR/config.yaml is still the untouched template. Edit it (model.bundle,"
    warn "  sources[].url, mqtt.host), check it with '$VENV/bin/edge-ssd config check $CONF_DIR/config.yaml',"
    warn "  then: sudo systemctl start $SERVICE (it is enabled: it starts at boot)"
    return
  fi
  if [ "$LIVE" = 1 ] && systemctl is-active --quiet "$SERVICE" 2>/dev/null; then
    if [ "$PKG_CHANGED" = 1 ] || [ "$UNITS_CHANGED" = 1 ]; then
      svc_run "restart $SERVICE (updated)" systemctl restart "$SERVICE"
    else ok "$SERVICE running"; fi
  else
    svc_run "start $SERVICE" systemctl start "$SERVICE"
  fi
}

# ---------------------------------------------------------------------------------------------------- coral
write_coral_rules() {
  local tmp=$WORK/coral.rules
  cat > "$tmp" <<'EOF'
# edge-ssd: Coral Edge TPU access for the plugdev group (USB: before and after firmware load) and apex (PCIe/M.2)
SUBSYSTEM=="usb", ATTRS{idVendor}=="1a6e", ATTRS{idProduct}=="089a", MODE="0664", GROUP="plugdev"
SUBSYSTEM=="usb", ATTRS{idVendor}=="18d1", ATTRS{idProduct}=="9302", MODE="0664", GROUP="plugdev"
SUBSYSTEM=="apex", MODE="0660", GROUP="apex"
EOF
  local before=$CHANGES
  install_file "$tmp" "/$CORAL_RULES" 644
  if [ "$CHANGES" != "$before" ]; then
    sys_run "reload udev rules" udevadm control --reload-rules
    sys_run "re-trigger usb devices" udevadm trigger --subsystem-match=usb
  fi
}

install_libedgetpu_deb() {
  [ -n "$LIBEDGETPU_DEB" ] || return 0
  local deb; deb=$(cd "$(dirname "$LIBEDGETPU_DEB")" && pwd)/$(basename "$LIBEDGETPU_DEB")
  sys_run "install $(basename "$deb")" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "$deb"
}

coral_probe() {  # does the Edge TPU delegate load with the venv's TFLite runtime? (child process: a crash is safe)
  local v line rc=0 arch codename rt
  v=$(r "$VENV")
  if [ "$LIVE" = 0 ] || [ "$DRY_RUN" = 1 ]; then
    ok "Edge TPU delegate probe skipped (not the live system): run edge-ssd doctor on the device"; return
  fi
  if ! "$v/bin/python" -c "import edge_ssd" >/dev/null 2>&1; then
    ok "Edge TPU delegate probe skipped (edge-ssd is not installed in $VENV)"; return
  fi
  line=$("$v/bin/python" -m edge_ssd.runtime.edgetpu_probe 2>/dev/null) || rc=$?
  if [ "$rc" = 0 ]; then ok "$line"; return; fi
  warn "$line"
  [ "$rc" = 2 ] || return 0
  arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
  codename=$(. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}")
  rt=$("$v/bin/python" -c 'import importlib.metadata as m; print("ai-edge-litert " + m.version("ai-edge-litert"))' \
       2>/dev/null || printf 'your TFLite runtime')
  warn "  the right libedgetpu is one built for $rt: from https://github.com/feranick/libedgetpu/releases take"
  warn "  libedgetpu1-std_*${codename:+.$codename}_${arch}.deb, then: sudo deploy/install.sh --coral --libedgetpu-deb FILE"
}

# ------------------------------------------------------------------------------------------------ uninstall
remove_path() {  # remove_path PATH(target view) [dir]
  local p; p=$(r "$1")
  if [ ! -e "$p" ] && [ ! -L "$p" ]; then ok "$1 already absent"; return; fi
  do_run "remove $1" rm -rf -- "$p"
}

ha_remove() {  # the device out of Home Assistant while the venv is still there (best effort: needs the broker)
  local cfg="$CONF_DIR/config.yaml"
  [ -x "$(r "$VENV")/bin/edge-ssd" ] && [ -f "$(r "$cfg")" ] || return 0
  if ! grep -q '^mqtt:' "$(r "$cfg")"; then ok "no mqtt section in $cfg: nothing announced to Home Assistant"; return 0; fi
  if [ "$DRY_RUN" = 1 ] || [ "$LIVE" = 0 ]; then
    sys_run "remove the device from Home Assistant" "$VENV/bin/edge-ssd" ha remove --config "$cfg"; return 0
  fi
  if "$VENV/bin/edge-ssd" ha remove --config "$cfg"; then change "removed the device from Home Assistant"
  else warn "the device stays in Home Assistant (see above): delete it there, or run 'edge-ssd ha remove' first"; fi
}

uninstall() {
  local name v p
  say "edge-ssd uninstall (root=$ROOT, prefix=$PREFIX)"
  if [ "$LIVE" = 1 ]; then
    if systemctl is-active --quiet "$SERVICE" 2>/dev/null || systemctl is-enabled --quiet "$SERVICE" 2>/dev/null; then
      if [ "$SYSTEMD_UP" = 1 ]; then sys_run "stop and disable $SERVICE" systemctl disable --now "$SERVICE"
      else sys_run "disable $SERVICE" systemctl disable --quiet "$SERVICE"; fi
    fi
  elif [ -e "$ROOT$UNIT_DIR/$SERVICE" ]; then
    do_run "disable $SERVICE (systemctl --root)" systemctl --root="$ROOT" disable --quiet "$SERVICE"
  fi
  ha_remove
  local removed=0
  for name in "${UNIT_TEMPLATES[@]}"; do
    name=$(basename "$name")
    p=$(r "$UNIT_DIR/$name")
    if [ -e "$p" ]; then removed=1; fi
    remove_path "$UNIT_DIR/$name"
  done
  [ "$removed" = 0 ] || svc_run "reload systemd" systemctl daemon-reload
  p=$(r "/$CORAL_RULES")
  if [ -e "$p" ]; then remove_path "/$CORAL_RULES"; sys_run "reload udev rules" udevadm control --reload-rules; fi
  v=$(r "$VENV")
  if [ -e "$v" ] && [ ! -f "$v/pyvenv.cfg" ]; then
    die "$VENV is not a venv (no pyvenv.cfg): refusing to delete it; remove it yourself"
  fi
  remove_path "$VENV"
  if [ -e "$(r "$PREFIX")/docs" ]; then remove_path "$PREFIX/docs"; fi
  if [ -e "$(r "$PREFIX")/constraints.txt" ]; then remove_path "$PREFIX/constraints.txt"; fi
  p=$(r "$PREFIX")
  if [ -d "$p" ] && [ -z "$(ls -A -- "$p")" ]; then do_run "remove empty $PREFIX" rmdir -- "$p"
  elif [ -d "$p" ] && [ "$DRY_RUN" = 0 ]; then warn "$PREFIX is not empty: kept"; fi
  if user_exists; then sys_run "remove user $SVC_USER" userdel "$SVC_USER"; else ok "user $SVC_USER absent"; fi
  if [ "$PURGE" = 1 ]; then
    remove_path "$CONF_DIR"
    remove_path "$STATE_DIR"
  else
    if [ -e "$(r "$CONF_DIR")" ]; then ok "kept $CONF_DIR (your config; --purge removes it)"; fi
    if [ -e "$(r "$STATE_DIR")" ]; then ok "kept $STATE_DIR (spool and state; --purge removes it)"; fi
  fi
  summary
}

summary() {
  local mode=""; [ "$DRY_RUN" = 1 ] && mode=" (dry run: nothing was changed)"
  if [ "$CHANGES" -eq 0 ]; then
    say "edge-ssd: nothing to do, everything is already in place${mode}"
  else
    say "edge-ssd: $CHANGES change(s)${mode}"
  fi
  if [ "$SKIPPED" -gt 0 ] && [ "$LIVE" = 0 ]; then say "edge-ssd: $SKIPPED live-system command(s) printed, not run (--root $ROOT)"
  elif [ "$SKIPPED" -gt 0 ]; then say "edge-ssd: $SKIPPED systemctl command(s) printed, not run (systemd is not running)"; fi
}

# ----------------------------------------------------------------------------------------------------- main
if [ "$LIVE" = 1 ] && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
  die "must run as root on the live system: sudo $0 $*  (or try --dry-run / --root DIR)"
fi
if [ "$UNINSTALL" = 1 ]; then uninstall; exit 0; fi

[ -f "$REPO/$CONFIG_TEMPLATE" ] || die "config template $REPO/$CONFIG_TEMPLATE is missing (incomplete checkout?)"
[ -f "$REPO/${UNIT_TEMPLATES[0]}" ] || die "unit template $REPO/${UNIT_TEMPLATES[0]} is missing (incomplete checkout?)"
if [ -n "$SOURCE" ] && [ ! -e "$SOURCE" ] && [[ "$SOURCE" == */* ]]; then
  die "--source $SOURCE: no such file or directory"
fi

mode=""; if [ "$DRY_RUN" = 1 ]; then mode=", dry run"; fi
say "edge-ssd install (root=$ROOT, prefix=$PREFIX$mode)"
if [ "$SKIP_CHECKS" = 1 ]; then PY=$(find_python); ok "system checks skipped (--skip-checks)"; else check_system; fi
apt_install
if [ "$CORAL" = 1 ]; then coral_hint; fi
ensure_user
ensure_dir "$PREFIX" 755
before_pkg=$CHANGES
ensure_venv
PKG_CHANGED=0; [ "$CHANGES" = "$before_pkg" ] || PKG_CHANGED=1
# /etc/edge-ssd: root:edge-ssd 0750 (the unit's ConfigurationDirectoryMode=0750 keeps the owner, so the
# service user must get in through the group); config.yaml root:edge-ssd 0640 (it may hold the MQTT password)
ensure_dir "$CONF_DIR" 750
chown_svc "root:$SVC_USER" "$CONF_DIR"
cfg=$(r "$CONF_DIR/config.yaml")
if [ -e "$cfg" ]; then
  ok "$CONF_DIR/config.yaml exists: kept (never overwritten)"
else
  do_run "write $CONF_DIR/config.yaml from $CONFIG_TEMPLATE (edit it: MQTT broker, camera, model)" \
    install -m 640 -- "$REPO/$CONFIG_TEMPLATE" "$cfg"
fi
chown_svc "root:$SVC_USER" "$CONF_DIR/config.yaml"
ensure_dir "$STATE_DIR" 750
chown_svc "$SVC_USER:$SVC_USER" "$STATE_DIR"
if [ "$CORAL" = 1 ]; then write_coral_rules; install_libedgetpu_deb; coral_probe; fi
install_docs
install_units
enable_service
start_service
summary
