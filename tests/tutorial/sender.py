#!/usr/bin/env python3
"""The tutorial's sender, as it behaves: headerless PCM, 8000 Hz, 16-bit
little-endian mono, in 320-byte UDP datagrams (20 ms each) to port 5005,
sent at twice real time (it sleeps 10 ms per 20 ms packet).

Usage: sender.py FILE.raw [HOST [PORT]]   (FILE: s16le 8 kHz mono)
Standard library only, as the tutorial's.
"""
import socket
import sys
import time

CHUNK = 320  # bytes: 160 frames = 20 ms


def main():
    path = sys.argv[1]
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 5005
    with open(path, "rb") as f:
        data = f.read()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    for i in range(0, len(data) - CHUNK + 1, CHUNK):
        sock.sendto(data[i:i + CHUNK], (host, port))
        sent += 1
        time.sleep(0.01)  # half the packet's duration: twice real time
    print(sent)


if __name__ == "__main__":
    main()
