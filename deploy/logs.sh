#!/usr/bin/env bash
# Follows a netspeaker service's log on a Pi over ssh (journalctl -fu).
#
#   deploy/logs.sh pi@speaker.local                       the receiver
#   deploy/logs.sh pi@speaker.local netspeaker-send@kitchen
#   deploy/logs.sh pi@speaker.local -- --since today      extra journalctl options
#   deploy/logs.sh --local                                on the Pi itself
# The remote command is built here, with our values in it, on purpose.
# shellcheck disable=SC2029
set -euo pipefail

usage() {
    cat <<'EOF2'
Usage: deploy/logs.sh [USER@]HOST|--local [UNIT] [-- JOURNALCTL-OPTIONS...]

Follows the journal of UNIT (default netspeaker) on HOST over ssh. USER must
be allowed to read the system journal (group adm or systemd-journal; the
default user of Raspberry Pi OS is), else the log is empty: add --sudo.

  --local     on this machine
  --sudo      run journalctl with sudo
  -h, --help  this text
EOF2
}

die() {
    echo "logs.sh: $*" >&2
    exit 1
}

host="" local=0 unit="" sudo=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
    --local) local=1 ;;
    --sudo) sudo="sudo" ;;
    -h | --help)
        usage
        exit 0
        ;;
    --)
        shift
        extra=("$@")
        break
        ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
        if [ -z "$host" ] && [ "$local" -eq 0 ]; then
            host=$1
        elif [ -z "$unit" ]; then
            unit=$1
        else
            die "unexpected argument $1 (see --help)"
        fi
        ;;
    esac
    shift
done
[ -n "$host" ] || [ "$local" -eq 1 ] || die "give [USER@]HOST or --local (see --help)"
unit=${unit:-netspeaker}

cmd=(${sudo:+"$sudo"} journalctl --no-hostname -o short-precise -f -u "$unit" "${extra[@]}")
if [ "$local" -eq 1 ]; then
    exec "${cmd[@]}"
fi
# -t: a terminal, so Ctrl-C stops journalctl on the Pi too (and sudo can ask).
quoted=$(printf '%q ' "${cmd[@]}")
exec ssh -t "$host" "$quoted"
