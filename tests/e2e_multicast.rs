//! The receiver on a multicast group (issue 3: `--group`, `--interface`),
//! IPv4 and IPv6, with the real `netspeaker-send` as the sender. Multicast
//! is sent only inside a private network namespace (TESTING.md): IPv4 on
//! the namespace's loopback, IPv6 across a veth pair, so that the sender
//! and the receiver sit on two interfaces and the group is joined on the
//! receiver's one. `--interface` takes a name or an address of a local
//! interface, IPv4 or IPv6, on both sides. The receiver plays into ALSA's
//! `null` device.

mod common;

use common::receiver::Stats;
use common::{AlsaConfig, TestDir};
use netspeaker::send::wav::write_wav;
use std::process::{Command, Stdio};

const RX: &str = env!("CARGO_BIN_EXE_netspeaker");
const TX: &str = env!("CARGO_BIN_EXE_netspeaker-send");

/// Runs `setup`, then the receiver (in the background), the sender and
/// `after` in a private network namespace; returns the receiver's final
/// statistics and its log.
fn run_in_namespace(
    dir: &TestDir,
    setup: &str,
    rx_args: &str,
    tx_args: &str,
    after: &str,
) -> (Stats, String) {
    let alsa = AlsaConfig::write(&dir.path);
    let wav = dir.file("in.wav");
    let samples: Vec<i16> = (0..8000u32).map(|i| (i % 200) as i16 * 50).collect();
    std::fs::write(&wav, write_wav(8000, 1, &samples)).unwrap();
    let log = dir.file("rx.log");
    let script = format!(
        "set -e
{setup}
ALSA_CONFIG_PATH={conf} {rx} --device null --no-mlock --rt-priority 0 --stats-interval 0 {rx_args} 2>{log} >/dev/null &
r=$!
trap 'kill $r 2>/dev/null || true' EXIT
n=0
while ! grep -q 'open:' {log}; do sleep 0.05; n=$((n+1)); [ $n -lt 200 ] || exit 1; done
{tx} -q {wav} {tx_args}
{after}
sleep 0.3
kill -TERM $r
wait $r",
        conf = alsa.path.display(),
        rx = RX,
        tx = TX,
        log = log.display(),
        wav = wav.display(),
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("run unshare (util-linux)");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\n{}\nreceiver log:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = Stats::last_in(&text).unwrap_or_else(|| panic!("no statistics line:\n{text}"));
    (stats, text)
}

#[test]
fn ipv4_group_joined_on_named_interface() {
    let dir = TestDir::new("mc4");
    let (stats, log) = run_in_namespace(
        &dir,
        "ip link set lo up; ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo",
        "--listen 0.0.0.0:5004 --group 239.255.77.1 --interface lo",
        "--codec pcmu --ttl 1 --interface lo 239.255.77.1:5004",
        "",
    );
    // 1 s of audio in 20 ms packets.
    assert_eq!(stats.get("packets"), 50.0, "{log}");
    assert_eq!(stats.get("malformed"), 0.0, "{log}");
}

#[test]
fn ipv6_group_joined_across_a_veth_pair() {
    let dir = TestDir::new("mc6");
    let setup = format!(
        "ip link set lo up
ip link add va type veth peer name vb
ip link set va up
ip link set vb up
{}",
        common::WAIT_VETH_IPV6
    );
    let (stats, log) = run_in_namespace(
        &dir,
        &setup,
        "--listen [::]:5004 --group ff15::77 --interface vb",
        "--codec pcmu --ttl 2 --interface va [ff15::77]:5004",
        "",
    );
    assert_eq!(stats.get("packets"), 50.0, "{log}");
}

/// Both programs name their interface by its IPv6 address; a truncated
/// datagram sent to the group afterwards is dropped, and the receiver's
/// main thread logs it (the net thread only reports it).
#[test]
fn ipv6_group_with_interfaces_named_by_address_and_drop_logged() {
    let dir = TestDir::new("mc6addr");
    let setup = format!(
        "ip link set lo up
ip link add va type veth peer name vb
ip -6 addr add fd00::a/64 dev va nodad
ip -6 addr add fd00::b/64 dev vb nodad
ip link set va up
ip link set vb up
{}",
        common::WAIT_VETH_IPV6
    );
    // IPV6_MULTICAST_IF is 17 on Linux.
    let stray =
        "python3 -c \"import socket; s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); \
s.setsockopt(socket.IPPROTO_IPV6, 17, socket.if_nametoindex('va')); \
s.sendto(bytes([0x80, 0, 1]), ('ff15::77', 5004))\"";
    let (stats, log) = run_in_namespace(
        &dir,
        &setup,
        "--listen [::]:5004 --group ff15::77 --interface fd00::b",
        "--codec pcmu --ttl 2 --interface fd00::a [ff15::77]:5004",
        stray,
    );
    assert_eq!(stats.get("packets"), 50.0, "{log}");
    assert_eq!(stats.get("malformed"), 1.0, "{log}");
    assert!(
        log.lines().any(
            |l| l.contains("dropped datagram from") && l.contains("shorter than an RTP header")
        ),
        "{log}"
    );
}
