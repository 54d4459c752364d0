#!/usr/bin/env python3
"""Writes the seed corpus for the parse_packet fuzz target.

Real packets: ffmpeg's RTP sender (PCMU, PCMA, L16 mono and stereo) is
captured on loopback, a few datagrams of each. Hand-made variants add what
ffmpeg never sends: CSRC lists, a header extension, padding, RTCP on the
RTP port, and the tutorial's headerless 320-byte s16le datagram.

Usage: fuzz/corpus/generate.py   (writes fuzz/corpus/parse_packet/*)
"""
import math
import os
import socket
import struct
import subprocess

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parse_packet")


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def capture_ffmpeg(name, codec, rate, channels, count=3):
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    port = rx.getsockname()[1]
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
           "-i", f"sine=frequency=440:sample_rate={rate}:duration=1",
           "-ac", str(channels), "-c:a", codec, "-f", "rtp",
           f"rtp://127.0.0.1:{port}?pkt_size=1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        for i in range(count):
            data, _ = rx.recvfrom(65536)
            write(f"ffmpeg_{name}_{i}", data)
    finally:
        proc.kill()
        proc.wait()
        rx.close()


def rtp(pt, seq, ts, ssrc, payload, marker=False, csrcs=(), ext_words=None, pad=0):
    b0 = 0x80 | len(csrcs)
    if ext_words is not None:
        b0 |= 0x10
    if pad:
        b0 |= 0x20
    d = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    for c in csrcs:
        d += struct.pack("!I", c)
    if ext_words is not None:
        d += struct.pack("!HH", 0xBEDE, ext_words) + b"\x11" * (4 * ext_words)
    d += payload
    if pad:
        d += b"\x00" * (pad - 1) + bytes([pad])
    return d


def main():
    os.makedirs(OUT, exist_ok=True)
    capture_ffmpeg("pcmu", "pcm_mulaw", 8000, 1)
    capture_ffmpeg("pcma", "pcm_alaw", 8000, 1)
    capture_ffmpeg("l16_mono", "pcm_s16be", 44100, 1)
    capture_ffmpeg("l16_stereo", "pcm_s16be", 44100, 2)

    tone = b"".join(struct.pack("!h", int(8000 * math.sin(i / 5))) for i in range(160))
    write("rtp_l16_csrc", rtp(11, 1, 160, 0x1234, tone, csrcs=(1, 2, 3)))
    write("rtp_l16_ext", rtp(11, 2, 320, 0x1234, tone, ext_words=2))
    write("rtp_l16_pad", rtp(11, 3, 480, 0x1234, tone, pad=4))
    write("rtp_dyn96_all", rtp(96, 65535, 0xFFFFFFFF, 1, tone * 2, marker=True,
                               csrcs=(9,), ext_words=1, pad=3))
    write("rtp_pcmu_marker", rtp(0, 0, 0, 0xCAFE, b"\xff" * 160, marker=True))
    write("rtcp_rr", struct.pack("!BBHI", 0x80, 201, 1, 0x1234))
    write("rtcp_sr", struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x1234, 1, 2, 3, 4, 5))
    # The tutorial's stream: 20 ms of s16le 8 kHz mono, no header.
    write("raw_tutorial_320", b"".join(
        struct.pack("<h", int(8000 * math.sin(i / 5))) for i in range(160)))



def jitter_seeds():
    """Op sequences for the jitter_buffer target (see its Input decoder):
    a steady PCMU stream with 20 ms reads, and an L16 stereo one with a
    swapped pair, a duplicate and a loss."""
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jitter_buffer")
    os.makedirs(out, exist_ok=True)
    header = bytes([60, 40, 100])  # max delay 61 ms, target 40 ms, lost 101 ms

    def push(fmt, seq_delta, ts_delta, frames):
        # op 0, flags (format index), seq delta, ts delta, frames - 1, fill, 20 ms
        return bytes([0, fmt, seq_delta]) + struct.pack("<HH", ts_delta, frames - 1) + bytes([7, 200])

    def read(frames):
        return bytes([2]) + struct.pack("<H", frames - 1)

    steady = header + b"".join(push(0, 1, 160, 160) + read(160) for _ in range(60))
    with open(os.path.join(out, "steady_pcmu"), "wb") as f:
        f.write(steady)
    ops = [push(1, 1, 960, 960), push(1, 2, 1920, 960), push(1, 3, 2880, 960),
           push(1, 0, 0, 960), read(960), push(1, 2, 1920, 960), read(960), read(960)]
    with open(os.path.join(out, "l16_gaps_dup"), "wb") as f:
        f.write(header + b"".join(ops * 10))



if __name__ == "__main__":
    main()
    jitter_seeds()
