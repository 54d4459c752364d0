#!/usr/bin/env bash
# Installs netspeaker on a Raspberry Pi (or any systemd Linux): binaries to
# /usr/local/bin, units to /etc/systemd/system, option files to /etc/default
# (kept if present), a system user `netspeaker` in group audio; then enables
# and (re)starts netspeaker.service. Safe to run again to update.
#
#   deploy/install.sh pi@speaker.local      cross-build here, install there
#   deploy/install.sh --local               on the Pi itself (uses sudo)
#   deploy/install.sh --root DIR            into a directory tree (CI)
# The remote commands are built here, with our values in them, on purpose.
# shellcheck disable=SC2029
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/install.sh [OPTIONS] [USER@]HOST
       deploy/install.sh [OPTIONS] --local
       deploy/install.sh [OPTIONS] --root DIR

Installs the netspeaker receiver and sender with their systemd units.

  [USER@]HOST     install over ssh (USER needs sudo on HOST)
  --local         install on this machine (re-runs itself with sudo)
  --root DIR      install into DIR as if it were /; nothing is run, the
                  useradd/systemctl commands are printed instead
  --bin-dir DIR   take netspeaker and netspeaker-send from DIR instead of
                  building them
  --target TRIPLE cross-build target (default: from the host's `uname -m`:
                  aarch64-unknown-linux-gnu or armv7-unknown-linux-gnueabihf)
  --cross         build with `cross` (Docker) instead of cargo
  --sender        also enable and start netspeaker-send.service
  --srtp-key      accept (and, with --sender, send) only SRTP: creates the
                  key /etc/netspeaker/srtp.key (30 random bytes in base64,
                  mode 0600; an existing one is kept), hands it to the
                  units as a systemd credential (drop-in srtp.conf) and
                  prints it for the sender (netspeaker-send
                  --srtp-key-file, or ffmpeg -srtp_out_params)
  --ntp-server HOST
                  keep the wall clock in step with HOST (an NTP server on
                  the LAN, the same for every speaker that plays in step
                  with --sync-ms): installs chrony if it is missing, points
                  it at HOST (/etc/chrony/conf.d/netspeaker.conf), enables
                  chrony-wait.service and orders the receiver after
                  time-sync.target (drop-in time-sync.conf); see PI.md
  --no-start      install and enable, but do not (re)start anything
  -h, --help      this text
EOF
}

die() {
    echo "install.sh: $*" >&2
    exit 1
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

host="" local=0 root="" bin_dir="" target="" use_cross=0 sender=0 start=1 srtp_key=0 ntp_server=""
while [ $# -gt 0 ]; do
    case "$1" in
    --local) local=1 ;;
    --root)
        [ $# -ge 2 ] || die "--root needs a directory"
        root=$2
        shift
        ;;
    --bin-dir)
        [ $# -ge 2 ] || die "--bin-dir needs a directory"
        bin_dir=$2
        shift
        ;;
    --target)
        [ $# -ge 2 ] || die "--target needs a target triple"
        target=$2
        shift
        ;;
    --cross) use_cross=1 ;;
    --sender) sender=1 ;;
    --srtp-key) srtp_key=1 ;;
    --no-start) start=0 ;;
    --ntp-server)
        [ $# -ge 2 ] || die "--ntp-server needs a host name or address"
        # One word of letters, digits, dots, colons and dashes: it goes
        # into chrony's configuration as it is.
        [[ $2 =~ ^[A-Za-z0-9.:-]+$ ]] || die "--ntp-server: '$2' is not a host name or address"
        ntp_server=$2
        shift
        ;;
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

# Builds the binaries unless --bin-dir named them; prints their directory.
build() {
    local triple=$1
    if [ -n "$bin_dir" ]; then
        echo "$bin_dir"
        return
    fi
    command -v cargo >/dev/null || die "cargo not found: install Rust (rustup.rs) or pass --bin-dir"
    # Where cargo puts them: CARGO_TARGET_DIR when set (relative to the
    # repository, where cargo runs), else target/.
    local target_dir=${CARGO_TARGET_DIR:-target}
    case $target_dir in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
    if [ -z "$triple" ]; then
        (cd "$repo" && cargo build --release --bins >&2)
        echo "$target_dir/release"
    elif [ "$use_cross" -eq 1 ]; then
        (cd "$repo" && cross build --release --bins --target "$triple" >&2)
        echo "$target_dir/$triple/release"
    else
        (cd "$repo" && cargo build --release --bins --target "$triple" >&2) ||
            die "cross-build for $triple failed: see .cargo/config.toml for the Debian packages it needs, or use --cross (Docker)"
        echo "$target_dir/$triple/release"
    fi
}

check_bins() {
    local b
    for b in netspeaker netspeaker-send; do
        [ -x "$1/$b" ] || die "$1/$b is missing or not executable"
    done
}

# --- over ssh: ship binaries and this directory, run --local there ---------
if [ -n "$host" ]; then
    if [ -z "$target" ] && [ -z "$bin_dir" ]; then
        arch=$(ssh "$host" uname -m) || die "cannot reach $host over ssh"
        case "$arch" in
        aarch64 | arm64) target=aarch64-unknown-linux-gnu ;;
        armv7l | armv8l) target=armv7-unknown-linux-gnueabihf ;;
        *) die "$host is $arch: pass --target TRIPLE or --bin-dir DIR" ;;
        esac
    fi
    bins=$(build "$target")
    check_bins "$bins"
    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage/bin" "$stage/deploy" "$stage/systemd"
    cp "$bins/netspeaker" "$bins/netspeaker-send" "$stage/bin/"
    cp -R "$here/install.sh" "$here/uninstall.sh" "$here/default" "$here/PI.md" "$stage/deploy/"
    cp "$repo"/systemd/*.service "$stage/systemd/"
    remote=$(ssh "$host" 'mktemp -d /tmp/netspeaker-install.XXXXXX') || die "cannot reach $host over ssh"
    tar -C "$stage" -cf - . | ssh "$host" "tar -C '$remote' -xf -"
    args=(--local --bin-dir "$remote/bin")
    [ "$sender" -eq 0 ] || args+=(--sender)
    [ "$start" -eq 1 ] || args+=(--no-start)
    [ "$srtp_key" -eq 0 ] || args+=(--srtp-key)
    [ -z "$ntp_server" ] || args+=(--ntp-server "$ntp_server")
    # -t: sudo may ask for a password.
    ssh -t "$host" "sudo bash '$remote/deploy/install.sh' ${args[*]}; rc=\$?; rm -rf '$remote'; exit \$rc"
    exit
fi

# --- here: --local (for real) or --root DIR (into a tree, commands shown) --
if [ "$local" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
    # Build as the user (cargo lives in their home), install as root.
    bins=$(build "$target")
    args=(--local --bin-dir "$(cd "$bins" && pwd)")
    [ "$sender" -eq 0 ] || args+=(--sender)
    [ "$start" -eq 1 ] || args+=(--no-start)
    [ "$srtp_key" -eq 0 ] || args+=(--srtp-key)
    [ -z "$ntp_server" ] || args+=(--ntp-server "$ntp_server")
    exec sudo bash "$0" "${args[@]}"
fi
bins=$(build "$target")
check_bins "$bins"

if [ -n "$root" ]; then
    mkdir -p "$root"
    root=$(cd "$root" && pwd)
fi
dest=${root:-}

# Runs a command that changes the system; with --root only shows it.
run() {
    if [ -n "$root" ]; then
        echo "would run: $*"
    else
        "$@"
    fi
}

put() { # MODE SRC DEST
    install -D -m "$1" "$2" "$dest$3"
    echo "installed $3"
}

put 0755 "$bins/netspeaker" /usr/local/bin/netspeaker
put 0755 "$bins/netspeaker-send" /usr/local/bin/netspeaker-send
for unit in netspeaker.service netspeaker-send.service netspeaker-send@.service; do
    put 0644 "$repo/systemd/$unit" "/etc/systemd/system/$unit"
done
put 0644 "$here/PI.md" /usr/local/share/doc/netspeaker/PI.md
for f in netspeaker netspeaker-send; do
    if [ -e "$dest/etc/default/$f" ]; then
        echo "kept /etc/default/$f (yours; the shipped example is $here/default/$f)"
    else
        put 0644 "$here/default/$f" "/etc/default/$f"
    fi
done

# SRTP: one key for the stream, root's alone (0600); systemd copies it for
# the service at start (LoadCredential=), so the service user never reads
# /etc/netspeaker and the key is in no option file or process list.
key_file=/etc/netspeaker/srtp.key
# $1: unit, $2: its ExecStart command, to which the key file option is added.
srtp_dropin() {
    local dir="$dest/etc/systemd/system/$1.d"
    mkdir -p "$dir"
    cat >"$dir/srtp.conf" <<EOF
# Written by deploy/install.sh --srtp-key: SRTP only, with the key
# in $key_file,
# handed to the service as a systemd credential. For plain RTP again:
# remove this file, then systemctl daemon-reload and restart.
[Service]
LoadCredential=srtp.key:$key_file
ExecStart=
ExecStart=$2 --srtp-key-file \${CREDENTIALS_DIRECTORY}/srtp.key
EOF
    chmod 0644 "$dir/srtp.conf"
    echo "installed /etc/systemd/system/$1.d/srtp.conf"
}
if [ "$srtp_key" -eq 1 ]; then
    if [ -s "$dest$key_file" ]; then
        echo "kept $key_file (the existing key: senders that have it keep working)"
    else
        install -d -m 0700 "$dest/etc/netspeaker"
        (
            umask 077
            head -c 30 /dev/urandom | base64 >"$dest$key_file"
        )
        chmod 0600 "$dest$key_file"
        echo "created $key_file (mode 0600)"
    fi
    # shellcheck disable=SC2016 # $NETSPEAKER_OPTS is for systemd to expand.
    srtp_dropin netspeaker.service '/usr/local/bin/netspeaker $NETSPEAKER_OPTS'
    if [ "$sender" -eq 1 ]; then
        # shellcheck disable=SC2016
        srtp_dropin netspeaker-send.service '/usr/local/bin/netspeaker-send $NETSPEAKER_SEND_OPTS'
    fi
fi

# Clock: speakers that play in step (--sync-ms) need wall clocks in step.
# chrony, pointed at one server on the LAN, keeps them within tens of
# microseconds on wired Ethernet; chrony-wait.service holds
# time-sync.target until the clock is within 0.1 s (at most its 180 s
# timeout: a speaker without its server still starts, and plays in the
# adaptive mode until the clock is synced).
if [ -n "$ntp_server" ]; then
    if [ -n "$root" ] || ! command -v chronyd >/dev/null 2>&1; then
        run apt-get install -y --no-install-recommends chrony
    fi
    mkdir -p "$dest/etc/chrony/conf.d"
    cat >"$dest/etc/chrony/conf.d/netspeaker.conf" <<EOF
# Written by deploy/install.sh --ntp-server: the speakers' common time
# source, preferred over the distribution's pool so that every speaker
# follows the same clock. iburst: synchronised within seconds of boot;
# polling every 16-64 s keeps a Pi's crystal (it wanders with
# temperature) within tens of us.
server $ntp_server iburst minpoll 4 maxpoll 6 prefer
EOF
    chmod 0644 "$dest/etc/chrony/conf.d/netspeaker.conf"
    echo "installed /etc/chrony/conf.d/netspeaker.conf (server $ntp_server)"
    mkdir -p "$dest/etc/systemd/system/netspeaker.service.d"
    cat >"$dest/etc/systemd/system/netspeaker.service.d/time-sync.conf" <<'EOF'
# Written by deploy/install.sh --ntp-server: start once the wall clock is
# synchronised (chrony-wait.service), so --sync-ms plays in step from the
# first stream; a clock that never syncs delays the start by at most
# chrony-wait's timeout.
[Unit]
Wants=time-sync.target
After=time-sync.target
EOF
    chmod 0644 "$dest/etc/systemd/system/netspeaker.service.d/time-sync.conf"
    echo "installed /etc/systemd/system/netspeaker.service.d/time-sync.conf"
    run systemctl enable chrony.service chrony-wait.service
    run systemctl restart chrony.service
fi

# The service user: no login, no home, in group audio for /dev/snd.
if [ -n "$root" ] || ! id netspeaker >/dev/null 2>&1; then
    run useradd --system --user-group --groups audio --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin netspeaker
else
    run usermod --append --groups audio netspeaker
fi

run systemctl daemon-reload
units=(netspeaker.service)
[ "$sender" -eq 0 ] || units+=(netspeaker-send.service)
run systemctl enable "${units[@]}"
if [ "$start" -eq 1 ]; then
    # restart, not start: an update must replace the running binary.
    run systemctl restart "${units[@]}"
    [ -n "$root" ] || systemctl --no-pager --lines=5 status "${units[@]}" || true
fi
if [ "$srtp_key" -eq 1 ]; then
    echo "SRTP key for the sender (keep it secret; put it in a file of mode 0600"
    echo "for netspeaker-send --srtp-key-file FILE, or give it to ffmpeg as"
    echo "-srtp_out_suite AES_CM_128_HMAC_SHA1_80 -srtp_out_params KEY):"
    cat "$dest$key_file"
fi
echo "done. Options: /etc/default/netspeaker; logs: journalctl -fu netspeaker"
