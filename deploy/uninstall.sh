#!/usr/bin/env bash
# Undoes deploy/install.sh: stops and disables the services (every
# netspeaker-send@ instance too), removes the binaries, units and
# documentation, the SRTP drop-ins of install.sh --srtp-key and the chrony
# server line and time-sync drop-in of --ntp-server. Your option
# files in /etc/default, the SRTP key in /etc/netspeaker and the user
# `netspeaker` stay unless --purge is given.
#
#   deploy/uninstall.sh pi@speaker.local
#   deploy/uninstall.sh --local
#   deploy/uninstall.sh --root DIR
# The remote command is built here, with our values in it, on purpose.
# shellcheck disable=SC2029
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/uninstall.sh [--purge] [USER@]HOST
       deploy/uninstall.sh [--purge] --local
       deploy/uninstall.sh [--purge] --root DIR

  [USER@]HOST   uninstall over ssh (USER needs sudo on HOST)
  --local       uninstall from this machine (re-runs itself with sudo)
  --root DIR    uninstall from a tree made by install.sh --root DIR;
                systemctl/userdel commands are printed, not run
  --purge       also remove /etc/default/netspeaker*, the SRTP key
                /etc/netspeaker/srtp.key, and the user
  -h, --help    this text
EOF
}

die() {
    echo "uninstall.sh: $*" >&2
    exit 1
}

host="" local=0 root="" purge=0
while [ $# -gt 0 ]; do
    case "$1" in
    --local) local=1 ;;
    --root)
        [ $# -ge 2 ] || die "--root needs a directory"
        root=$2
        shift
        ;;
    --purge) purge=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
        [ -z "$host" ] || die "only one host, got $host and $1"
        host=$1
        ;;
    esac
    shift
done
modes=$local
[ -z "$root" ] || modes=$((modes + 1))
[ -z "$host" ] || modes=$((modes + 1))
[ "$modes" -eq 1 ] || die "give exactly one of [USER@]HOST, --local or --root DIR (see --help)"

args=(--local)
[ "$purge" -eq 0 ] || args+=(--purge)

if [ -n "$host" ]; then
    remote=$(ssh "$host" 'mktemp -d /tmp/netspeaker-uninstall.XXXXXX') || die "cannot reach $host over ssh"
    ssh "$host" "cat > '$remote/uninstall.sh'" <"${BASH_SOURCE[0]}"
    ssh -t "$host" "sudo bash '$remote/uninstall.sh' ${args[*]}; rc=\$?; rm -rf '$remote'; exit \$rc"
    exit
fi
if [ "$local" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
    exec sudo bash "$0" "${args[@]}"
fi

dest=""
if [ -n "$root" ]; then
    [ -d "$root" ] || die "$root is not a directory"
    dest=$(cd "$root" && pwd)
fi

run() {
    if [ -n "$root" ]; then
        echo "would run: $*"
    else
        "$@"
    fi
}

# Stop first, so nothing runs a deleted binary. Template instances are
# found both running (list-units) and enabled (their .wants symlinks).
units=(netspeaker.service netspeaker-send.service)
if [ -z "$root" ]; then
    while read -r unit _; do
        units+=("$unit")
    done < <(systemctl list-units --all --plain --no-legend 'netspeaker-send@*' || true)
    for link in /etc/systemd/system/*.wants/netspeaker-send@*.service; do
        [ -e "$link" ] || [ -L "$link" ] || continue
        units+=("$(basename "$link")")
    done
fi
run systemctl disable --now "${units[@]}" || true

remove() {
    if [ -e "$dest$1" ]; then
        rm -f "$dest$1"
        echo "removed $1"
    fi
}

remove /usr/local/bin/netspeaker
remove /usr/local/bin/netspeaker-send
for unit in netspeaker.service netspeaker-send.service netspeaker-send@.service; do
    remove "/etc/systemd/system/$unit"
    remove "/etc/systemd/system/$unit.d/srtp.conf"
    remove "/etc/systemd/system/$unit.d/time-sync.conf"
    rmdir "$dest/etc/systemd/system/$unit.d" 2>/dev/null || true
done
remove /usr/local/share/doc/netspeaker/PI.md
# install.sh --ntp-server's server line; chrony itself stays (other
# programs may rely on the clock), back on its own sources.
if [ -e "$dest/etc/chrony/conf.d/netspeaker.conf" ]; then
    remove /etc/chrony/conf.d/netspeaker.conf
    if [ -n "$root" ] || systemctl is-active --quiet chrony.service; then
        run systemctl restart chrony.service
    fi
fi
rmdir "$dest/usr/local/share/doc/netspeaker" 2>/dev/null || true
run systemctl daemon-reload

if [ "$purge" -eq 1 ]; then
    for f in "$dest"/etc/default/netspeaker "$dest"/etc/default/netspeaker-send "$dest"/etc/default/netspeaker-send-*; do
        [ -e "$f" ] || continue
        rm -f "$f"
        echo "removed ${f#"$dest"}"
    done
    remove /etc/netspeaker/srtp.key
    rmdir "$dest/etc/netspeaker" 2>/dev/null || true
    if [ -n "$root" ] || id netspeaker >/dev/null 2>&1; then
        run userdel netspeaker
    fi
else
    echo "kept /etc/default/netspeaker*, /etc/netspeaker and user netspeaker (remove with --purge)"
fi
echo "done."
