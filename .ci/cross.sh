#!/usr/bin/env bash
# CI for the Pi: cross-builds the release binaries for 64-bit (aarch64) and
# 32-bit (armv7) Raspberry Pi OS, prints each stripped binary's size, and
# runs the library tests and the integration tests that need no sound
# server and start none of our binaries (list below) for aarch64 under
# qemu. Installs what it needs on a clean Debian 12 (as root, or with
# sudo), also when run alone. Called from tests/run-all.sh.
#
#   .ci/cross.sh                 everything
#   CROSS_TEST_ARMV7=1 .ci/cross.sh   also run the tests for armv7 under qemu
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)
# Under qemu run every test that needs neither a sound server (no
# PulseAudio/JACK plugin exists for the foreign architecture) nor one of our
# own binaries as a child process (a foreign binary started by a test runs
# only where binfmt_misc hands it to qemu, which CI machines need not have):
# the library's unit tests and the integration tests below (tried: all pass
# under qemu-aarch64-static). The native run covers the rest: alsa_out, e2e,
# e2e_multicast, faults, impair, interop, send_* except send_alloc, and the
# receiver end-to-end tests in notify.rs (skipped here).
#
# Three library tests choose a multicast interface, which qemu user mode
# (Debian 12's 7.2) cannot pass on: it has no IP_MULTICAST_IF (ENOPROTOOPT)
# and, for a 64-bit guest, drops the interface index of an ip_mreqn join
# (its target struct is sized with a long), so the kernel joins by route.
# The native run covers them; on a real Pi the kernel takes both.
qemu_tests=(--lib --test playout_sim --test playout_alloc --test net_alloc --test send_alloc
    --test quality --test net_ffmpeg --test deploy --test notify -- --skip receiver::
    --skip multicast_out_options_read_back
    --skip multicast_interface_by_name_or_address_of_either_family
    --skip group_on_absent_interface_waits_and_joins_when_it_appears)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# --- packages (skipped when present, so a warm machine starts at once) ----
# Every package by name: apt runs with --no-install-recommends, so nothing
# comes along unasked (gcc-*-linux-gnu* without libc6-dev-*-cross cannot
# link: "cannot find Scrt1.o"). gcc and libc6-dev link the host's build
# scripts; espeak-ng (quality), ffmpeg (net_ffmpeg), shellcheck and
# systemd's systemd-analyze (deploy) are what the tests under qemu run.
# libopus-dev:arm64/armhf: the opus crate links the target's libopus,
# found through pkg-config in the target's multiarch directory.
pkgs=(pkg-config gcc libc6-dev gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf
    libc6-dev-arm64-cross libc6-dev-armhf-cross binutils-aarch64-linux-gnu
    binutils-arm-linux-gnueabihf qemu-user-static libasound2-dev:arm64 libasound2-dev:armhf
    libopus-dev:arm64 libopus-dev:armhf
    espeak-ng ffmpeg shellcheck systemd)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "cross.sh: installing ${missing[*]}"
    for arch in arm64 armhf; do
        dpkg --print-foreign-architectures | grep -qx "$arch" || $sudo dpkg --add-architecture "$arch"
    done
    # One unreachable mirror must not stop CI: install from what was fetched.
    $sudo apt-get update || echo "cross.sh: apt-get update reported errors; trying to install anyway" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

# --- release builds and their size ----------------------------------------
declare -A strip_tool=(
    [aarch64-unknown-linux-gnu]=aarch64-linux-gnu-strip
    [armv7-unknown-linux-gnueabihf]=arm-linux-gnueabihf-strip
)
sizes=()
for t in "${targets[@]}"; do
    echo "cross.sh: cargo build --release --target $t"
    cargo build --release --bins --target "$t"
    for b in netspeaker netspeaker-send; do
        # The release profile strips already; stripping a copy again makes
        # the number honest even if someone turns that off.
        tmp=$(mktemp)
        "${strip_tool[$t]}" -o "$tmp" "${CARGO_TARGET_DIR:-target}/$t/release/$b"
        bytes=$(stat -c %s "$tmp")
        rm -f "$tmp"
        sizes+=("$(awk -v t="$t" -v b="$b" -v n="$bytes" \
            'BEGIN { printf "%-30s %-16s %9d bytes %6.2f MiB", t, b, n, n / 1048576 }')")
    done
done

# --- tests under qemu -----------------------------------------------------
# The foreign alsa-lib cannot load the host's configuration (its PulseAudio
# hook has no arm64 plugin): give it a small one of our own.
alsa_dir=$(mktemp -d)
trap 'rm -rf "$alsa_dir"' EXIT
cat >"$alsa_dir/alsa.conf" <<CONF
pcm.null { type null }
pcm.!default { type null }
pcm.capture { type file slave.pcm "null" file "$alsa_dir/played.raw" format "raw" }
CONF
test_targets=(aarch64-unknown-linux-gnu)
[ "${CROSS_TEST_ARMV7:-0}" = 0 ] || test_targets+=(armv7-unknown-linux-gnueabihf)
for t in "${test_targets[@]}"; do
    echo "cross.sh: cargo test --target $t ${qemu_tests[*]} (under qemu)"
    ALSA_CONFIG_PATH="$alsa_dir/alsa.conf" cargo test --target "$t" "${qemu_tests[@]}"
done

echo "cross.sh: stripped release binaries:"
printf '  %s\n' "${sizes[@]}"
