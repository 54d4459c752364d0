#!/usr/bin/python3
"""The tutorial's client, as it behaves (used by the benchmarks for
comparison): receives headerless 8 kHz s16le mono on UDP port 5005 into an
unbounded byte string, pre-buffers 1 s, plays it through PyAudio with a
callback, and stops after 5 s without packets.

Usage: client.py [PORT]   (needs Debian's python3-pyaudio: /usr/bin/python3)
"""
import socket
import sys
import threading
import time

import pyaudio

RATE = 8000
FRAMES = 160
buf = bytearray()
lock = threading.Lock()
last_packet = time.time()


def receive(sock):
    global last_packet
    while True:
        try:
            data, _ = sock.recvfrom(4096)
        except socket.timeout:
            continue
        with lock:
            buf.extend(data)
        last_packet = time.time()


def callback(in_data, frame_count, time_info, status):
    need = frame_count * 2
    with lock:
        chunk = bytes(buf[:need])
        del buf[:need]
    if len(chunk) < need:
        chunk += b"\x00" * (need - len(chunk))
    return (chunk, pyaudio.paContinue)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5005
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(0.5)
    threading.Thread(target=receive, args=(sock,), daemon=True).start()
    while True:  # pre-buffer 1 s
        with lock:
            if len(buf) >= RATE * 2:
                break
        time.sleep(0.01)
    p = pyaudio.PyAudio()
    stream = p.open(format=pyaudio.paInt16, channels=1, rate=RATE, output=True,
                    frames_per_buffer=FRAMES, stream_callback=callback)
    stream.start_stream()
    while time.time() - last_packet < 5:
        time.sleep(0.1)
    stream.stop_stream()
    stream.close()
    p.terminate()


if __name__ == "__main__":
    main()
