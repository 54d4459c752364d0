#!/usr/bin/env bash
# Runs every test of netspeaker on a fresh Debian 12 machine (or Raspberry Pi
# OS): installs what the tests need (apt packages, rust targets), then
#   1. the build and lint (fmt, clippy),
#   2. cargo test: the unit and simulated-time tests, then the end-to-end
#      tests (they start their own PulseAudio/JACK servers and network
#      namespaces),
#   3. meanwhile, on the cores those leave idle: the aarch64 and armv7
#      builds, the stripped sizes, and under qemu the tests that need no
#      sound server (.ci/cross.sh lists them), then a short fuzz run of
#      every fuzz target.
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

step "build"
cargo test --all-targets --no-run 2>&1

step "lint"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings

# The unit and simulated-time tests keep both cores busy for a few
# seconds: alone, so that they never share the machine with a paced device.
step "cargo test: unit tests"
cargo test --lib --bins --benches --no-fail-fast 2>&1

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# The cross builds, the tests under qemu and the fuzz run only compute:
# they run beside the end-to-end tests, on cores of their own. On this
# 2-core VM a busy core delays what wakes on it even when the load is in
# the idle scheduling class (measured: a sleeping thread woke over 5 ms
# late 1-4 times in 16 s with both cores busy, never with one idle; with
# the load kept to one core, the 8 kHz plug's glide still stretched 53 ms
# (bar 0): a realtime thread stays on the core it last ran on). So the
# tests keep the first half of the cores, the compute steps the rest, in
# the idle scheduling and I/O classes and their own target directory
# (cargo's lock on ours never stalls a test run). On one core they run
# after the tests.
compute_steps() {
  if [ -x .ci/cross.sh ]; then
    step "aarch64 / armv7"
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/cross" .ci/cross.sh || return 1
  fi
  if [ -x fuzz/run.sh ]; then
    step "fuzz (short)"
    fuzz/run.sh "${FUZZ_SECONDS:-20}" || return 1
  fi
}
cores=$(nproc)
test_cores=$(((cores + 1) / 2))
background=""
pin_tests=()
if [ $quick = 0 ] && [ "$cores" -gt 1 ]; then
  pin_tests=(taskset -c "0-$((test_cores - 1))")
  (
    set -e
    taskset -pc "$test_cores-$((cores - 1))" $BASHPID >/dev/null
    chrt --idle -p 0 $BASHPID
    ionice -c 3 -p $BASHPID
    compute_steps
  ) >"$logs/background.log" 2>&1 &
  background=$!
fi

# One test binary at a time: the end-to-end tests play in real time into
# paced devices, with tolerances set on a quiet machine. Two at once (each
# in a network namespace of its own) made the timing of a sync joiner, a
# plug's glide and a source switch miss their bars in one run of two.
failed=()
step "cargo test: integration and end-to-end tests"
"${pin_tests[@]}" cargo test --test '*' --no-fail-fast 2>&1 || failed+=("cargo test")
step "end-to-end tests done"

if [ -n "$background" ]; then
  wait "$background" || failed+=("cross builds or fuzzing")
  cat "$logs/background.log"
elif [ $quick = 0 ]; then
  compute_steps || failed+=("cross builds or fuzzing")
fi
if [ ${#failed[@]} -gt 0 ]; then
  step "FAILED: ${failed[*]}"
  exit 1
fi
step "all tests passed"
