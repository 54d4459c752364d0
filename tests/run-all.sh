#!/usr/bin/env bash
# Runs every test of netspeaker on a fresh Debian 12 machine (or Raspberry Pi
# OS): installs what the tests need (apt packages, rust targets), then
#   1. cargo test (unit, simulated-time and end-to-end tests: the end-to-end
#      tests start their own PulseAudio/JACK servers and network namespaces),
#   2. lint (fmt, clippy),
#   3. the aarch64 and armv7 builds, the stripped sizes, and under qemu the
#      tests that need no sound server (.ci/cross.sh lists them),
#   4. a short fuzz run of every fuzz target.
# Usage: tests/run-all.sh [--quick]   (--quick: steps 1 and 2 only)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1

# Installed with --no-install-recommends: every package a step needs is
# named here, nothing comes along unasked.
#   build-essential    gcc + libc6-dev (cargo links with cc; gcc alone lacks
#                      crti.o), g++ (cargo-fuzz builds libFuzzer)
#   pkg-config libasound2-dev            alsa-sys
#   libopus-dev        libopus for the opus crate (audiopus_sys finds it
#                      with pkg-config)
#   alsa-utils pulseaudio pulseaudio-utils libasound2-plugins
#                      the paced devices (pulseaudio, pactl, the pulse and
#                      jack ALSA plugins)
#   jackd2             jackd, jack_lsp
#   ffmpeg, gstreamer1.0-tools + -plugins-base (rawaudioparse,
#   audioconvert, opusenc/opusdec) + -plugins-good (rtp incl. rtpopuspay,
#   udp, mulaw) + -alsa (benches)
#                      interop, net_ffmpeg, send_ffmpeg, send_gstreamer
#   python3            interop runs tests/tutorial/sender.py
#   python3-pyaudio    the tutorial's client (benches)
#   espeak-ng          quality, opus_fec (speech test signal)
#   iproute2 util-linux  ip, unshare, nsenter, setpriv (multicast, privileges)
#   systemd            systemd-analyze (deploy)
#   linter shellcheck  deploy
#   procps             pgrep (below)
#   sox valgrind       benches/report; sox: opus_fec (speech at 48 kHz stereo)
packages=(build-essential pkg-config libasound2-dev libopus-dev alsa-utils pulseaudio
  pulseaudio-utils libasound2-plugins jackd2 ffmpeg gstreamer1.0-tools
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-alsa
  python3 python3-pyaudio espeak-ng iproute2 util-linux systemd shellcheck
  procps sox valgrind)

# Each step says when it started, so a slow one shows in the log.
step() { echo "== $* ($(date -u +%H:%M:%S))"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A mirror in mid-sync can fail one index; the others still serve.
  as_root apt-get update -q || true
  as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi

# JACK keeps a machine-wide registry of at most 8 servers in /dev/shm; a
# jackd or client that was killed leaves its slot taken. With no jackd
# running, stale entries are only garbage: clear them so the JACK tests
# can start their servers.
if ! pgrep -x jackd >/dev/null 2>&1; then
  rm -f /dev/shm/jack-shm-registry /dev/shm/jack_sem.* 2>/dev/null || true
fi

# Nothing runs beside the end-to-end tests, although they spend most of
# their time waiting on paced devices: their tolerances hold on a quiet
# machine. Tried on this 2-core VM (session 26): the cross builds and
# fuzzing beside them in the idle scheduling class, on both cores (passed
# once, its drift cases apparently run a second time after a held-up
# sender) or kept to one (failed a timing test), also with the tests held
# to the other core (failed: a debug receiver time-stretching fills it,
# and its queue overflowed). A busy vCPU wakes even a realtime thread
# late: a sleeping thread woke over 5 ms late 1-4 times in 16 s with both
# cores busy, never with one idle. Two test binaries at once, each in its own
# network namespace, passed once alone (whole run 17 min) and failed
# three timing tests in a run with the compute steps beside them: too few
# runs to trust.
step "cargo test"
cargo test --all-targets --no-fail-fast 2>&1

step "lint"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

if [ $quick = 1 ]; then exit 0; fi

if [ -x .ci/cross.sh ]; then
  step "aarch64 / armv7"
  .ci/cross.sh
fi
if [ -x fuzz/run.sh ]; then
  step "fuzz (short)"
  fuzz/run.sh "${FUZZ_SECONDS:-20}"
fi
step "all tests passed"
