#!/usr/bin/env bash
# The main job, end to end on this machine: builds netspeaker and
# netspeaker-send, starts the receiver, streams a few seconds of speech to it
# over UDP (RTP L16 48 kHz stereo, on loopback) with the sender, and prints
# the receiver's statistics line.
#
# With a sound card (aplay -l lists one) the receiver plays on the ALSA
# "default" device: you hear it. Without one, it plays into a paced
# PulseAudio null sink (real time, like a card) through ALSA's file plugin,
# and the audio it played is saved as a WAV file whose name is printed.
#
# Usage: deploy/demo.sh [--no-card]
set -euo pipefail
cd "$(dirname "$0")/.."
force_nocard=0
for arg in "$@"; do
  case "$arg" in
    --no-card) force_nocard=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "usage: deploy/demo.sh [--no-card]" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
# build-essential links the build; libopus-dev: the opus crate links the
# system libopus (without it, it tries to build its own copy with cmake).
for p in build-essential alsa-utils libasound2-dev libopus-dev pkg-config espeak-ng sox pulseaudio pulseaudio-utils libasound2-plugins; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q || true
  as_root apt-get install -y -q --no-install-recommends "${need[@]}"
fi
command -v cargo >/dev/null || { echo "install Rust first: https://rustup.rs" >&2; exit 1; }

echo "== building"
cargo build --release --quiet --bin netspeaker --bin netspeaker-send
# Where cargo put them: CARGO_TARGET_DIR when set (relative to here), as cargo does.
bin=${CARGO_TARGET_DIR:-target}/release

work=$(mktemp -d /tmp/netspeaker-demo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

espeak-ng -w "$work/speech.wav" \
  "Hello. This is netspeaker. A live audio stream, sent over the network, played with the lowest latency the network allows." 2>/dev/null
echo "== test signal: $work/speech.wav ($(soxi -D "$work/speech.wav") s of speech)"

device=default
recording=""
if [ $force_nocard = 0 ] && aplay -l 2>/dev/null | grep -q '^card'; then
  echo "== sound card found: playing on ALSA 'default'"
else
  echo "== no sound card: playing into a paced PulseAudio null sink, recorded by ALSA's file plugin"
  mkdir -p "$work/pa" "$work/rt"
  cat > "$work/default.pa" <<PA
load-module module-null-sink sink_name=speaker rate=48000
load-module module-native-protocol-unix auth-anonymous=1 socket=$work/pa/native
set-default-sink speaker
PA
  PULSE_RUNTIME_PATH=$work/rt pulseaudio -n --daemonize=no --use-pid-file=no \
    --exit-idle-time=-1 --disallow-exit -F "$work/default.pa" >"$work/pulse.log" 2>&1 &
  pids+=($!)
  export PULSE_SERVER=unix:$work/pa/native
  for _ in $(seq 50); do pactl info >/dev/null 2>&1 && break; sleep 0.1; done
  cat > "$work/alsa.conf" <<CONF
pcm.pulse { type pulse }
pcm.paced { type file slave.pcm "pulse" file "$work/played.raw" format "raw" }
CONF
  export ALSA_CONFIG_PATH=$work/alsa.conf
  device=paced
  recording=$work/played.wav
fi

echo "== starting the receiver: netspeaker --device $device --listen 127.0.0.1:5004 --rtp-format 96=L16/48000/2"
"$bin/netspeaker" --device "$device" --listen 127.0.0.1:5004 --rtp-format 96=L16/48000/2 \
  --stats-interval 0 2>"$work/receiver.log" &
rx=$!
pids+=("$rx")
# "open:" is logged once the device really consumes audio (a sound server
# can take a second or two to start a stream).
for _ in $(seq 100); do grep -q "open:" "$work/receiver.log" && break; sleep 0.1; done

echo "== streaming with the sender: netspeaker-send --codec l16 --rate 48000 --channels 2 speech.wav 127.0.0.1:5004"
"$bin/netspeaker-send" --codec l16 --rate 48000 --channels 2 "$work/speech.wav" 127.0.0.1:5004
sleep 0.3
kill -USR1 $rx; sleep 0.2
kill -TERM $rx; wait $rx || true
echo "== receiver log"
cat "$work/receiver.log"
if [ -n "$recording" ]; then
  sox -t raw -r 48000 -e signed -b 16 -c 2 "$work/played.raw" "$recording"
  echo "== what the speaker played is saved as $recording ($(soxi -D "$recording") s)"
fi
