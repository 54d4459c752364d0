#!/usr/bin/env python3
"""The benchmark's stream sender, the same one for every contender.

Input: options (stream kind, rate, channels, seconds, destination).
Output: UDP datagrams to the destination, paced against an absolute
deadline on CLOCK_MONOTONIC (packet k leaves at start + k * ptime, however
late one wake-up was), and on stdout one line `click T` per click packet,
T being the CLOCK_MONOTONIC time (s) at which it left, then `done N`.

Policy: the signal is a quiet 440 Hz tone (-40 dBFS, so no receiver sees
digital silence and takes a shortcut) with a 2 ms full-scale click at the
first sample of one packet every --click-every seconds. The report finds
each click in a recording of the sink and subtracts its send time: on
loopback, send time is arrival time to within microseconds.

Kinds: l16 (RTP, dynamic PT 96, network byte order), pcmu (RTP PT 0),
raw (headerless s16le, the tutorial's stream). Standard library only.

Skew: --skew-ppm P plays a sender whose clock runs P ppm fast (negative:
slow) against CLOCK_MONOTONIC: packets keep their frames and timestamps
but leave every ptime / (1 + P / 1e6) seconds, so the stream delivers
rate * (1 + P / 1e6) frames per second of the receiver's clock.

Sender reports: --rtcp sends an RTCP sender report (RFC 3550 section
6.4.1) to the destination port + 1 with the first packet and then once a
second: the wall clock (CLOCK_REALTIME, NTP format) against the RTP
timestamp of the same instant, on the sender's (skewed) media clock, as
sync mode (--sync-ms) needs.
"""
import argparse
import math
import os
import random
import socket
import struct
import sys
import time


def ulaw(sample):
    """G.711 mu-law encoding of one 16-bit sample (ITU-T G.711 table form)."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    if sample < 0:
        sample = -sample
    sample = min(sample, clip) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["l16", "pcmu", "raw"], required=True)
    ap.add_argument("--rate", type=int, required=True)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--ptime-ms", type=int, default=20)
    ap.add_argument("--click-every", type=float, default=2.5)
    ap.add_argument("--first-click", type=float, default=1.5)
    ap.add_argument("--dest", default="127.0.0.1:5004")
    ap.add_argument("--skew-ppm", type=float, default=0.0,
                    help="the sender's clock runs this many ppm fast (negative: slow)")
    ap.add_argument("--rtcp", action="store_true",
                    help="send RTCP sender reports to the destination port + 1")
    a = ap.parse_args()

    host, port = a.dest.rsplit(":", 1)
    frames = a.rate * a.ptime_ms // 1000
    ptime = a.ptime_ms / 1000.0
    packets = int(round(a.seconds / ptime))
    # Seconds of CLOCK_MONOTONIC between packets: a fast clock sends sooner.
    interval = ptime / (1.0 + a.skew_ppm / 1e6)
    click_frames = max(1, a.rate * 2 // 1000)

    # Precompute every distinct payload: the tone repeats every 20 ms for
    # 440 Hz only at some rates, so build one period of packets per second
    # and a click packet, all before the clock starts.
    def packet_samples(k, click):
        out = []
        for i in range(frames):
            n = k * frames + i
            v = int(300 * math.sin(2 * math.pi * 440 * n / a.rate))
            if click and i < click_frames:
                v = 30000
            out.extend([v] * a.channels)
        return out

    per_second = int(round(1.0 / ptime))
    tone = [packet_samples(k, False) for k in range(per_second)]
    clicks = [packet_samples(k, True) for k in range(per_second)]

    def encode(samples):
        if a.kind == "l16":
            return struct.pack(">%dh" % len(samples), *samples)
        if a.kind == "pcmu":
            return bytes(ulaw(s) for s in samples)
        return struct.pack("<%dh" % len(samples), *samples)

    tone = [encode(s) for s in tone]
    clicks = [encode(s) for s in clicks]

    click_every = int(round(a.click_every / ptime))
    first_click = int(round(a.first_click / ptime))
    pt = 96 if a.kind == "l16" else 0
    ssrc = random.getrandbits(32)
    seq0 = random.getrandbits(16)
    ts0 = random.getrandbits(32)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dest = (host, int(port))
    rtcp_dest = (host, int(port) + 1)
    octets = 0

    def sender_report(k, deadline):
        # The RTP timestamp of this instant: packet k's first frame left
        # at its deadline, and the media clock has run on since.
        now_wall, now_mono = time.time(), time.monotonic()
        ts = ts0 + k * frames + int((now_mono - deadline) * a.rate * (1.0 + a.skew_ppm / 1e6))
        ntp = now_wall + 2208988800.0
        sec = int(ntp)
        frac = int((ntp - sec) * 2**32) & 0xFFFFFFFF
        return struct.pack(">BBHIIIIII", 0x80, 200, 6, ssrc, sec & 0xFFFFFFFF, frac,
                           ts & 0xFFFFFFFF, k + 1, octets)
    out = sys.stdout
    start = time.monotonic() + 0.05
    for k in range(packets):
        deadline = start + k * interval
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        is_click = k >= first_click and (k - first_click) % click_every == 0
        payload = (clicks if is_click else tone)[k % per_second]
        if a.kind == "raw":
            datagram = payload
        else:
            header = struct.pack(
                ">BBHII",
                0x80,
                pt | (0x80 if k == 0 else 0),
                (seq0 + k) & 0xFFFF,
                (ts0 + k * frames) & 0xFFFFFFFF,
                ssrc,
            )
            datagram = header + payload
        sock.sendto(datagram, dest)
        octets += len(datagram) - (0 if a.kind == "raw" else 12)
        if a.rtcp and a.kind != "raw" and k % per_second == 0:
            sock.sendto(sender_report(k, deadline), rtcp_dest)
        if is_click:
            out.write("click %.6f\n" % time.monotonic())
            out.flush()
    out.write("done %d\n" % packets)
    out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
