#!/bin/sh
# Regenerates the G.711 reference files from sox (an outside codec, so the
# tests do not take their expected values from the code under test).
# Made with SoX v14.4.2 (Debian 12); ffmpeg 5.1 decodes all 512 codes to
# the same values. Run from this directory: sh make.sh
set -eu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Every code 0..255, decoded to 16-bit little-endian.
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)))' >"$tmp/codes"
sox -t ul -r 8000 -c 1 "$tmp/codes" -t s16 -e signed -b 16 -L ulaw_decode.s16le
sox -t al -r 8000 -c 1 "$tmp/codes" -t s16 -e signed -b 16 -L alaw_decode.s16le

# Every 16-bit value -32768..32767, encoded. -D: no dither (sox dithers
# when it reduces the bit depth, which would make the codes random).
python3 -c '
import struct, sys
sys.stdout.buffer.write(b"".join(struct.pack("<h", v) for v in range(-32768, 32768)))
' >"$tmp/sweep"
sox -D -t s16 -e signed -b 16 -L -r 8000 -c 1 "$tmp/sweep" -t ul "$tmp/ulaw"
sox -D -t s16 -e signed -b 16 -L -r 8000 -c 1 "$tmp/sweep" -t al "$tmp/alaw"

# The 65536 codes as runs: one 3-byte record (first value of the run as
# i16 little-endian, the code) wherever the code changes; about 770 bytes
# instead of 64 KiB each.
for law in ulaw alaw; do
    python3 -c '
import sys
enc = open(sys.argv[1], "rb").read()
assert len(enc) == 65536
out, prev = bytearray(), None
for i, c in enumerate(enc):
    if c != prev:
        out += (i - 32768).to_bytes(2, "little", signed=True) + bytes([c])
        prev = c
sys.stdout.buffer.write(out)
' "$tmp/$law" >"${law}_encode.runs"
done
