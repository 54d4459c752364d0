//! Multicast and IPv6, only where no packet can leave the machine: the
//! multicast test runs sender and receiver inside a network namespace it
//! creates (`unshare -n`, loopback with a multicast route), and checks
//! that the datagrams arrive with the TTL `--ttl` set, through the
//! interface `--interface` named (by name and by address). IPv6 unicast
//! goes to ::1; IPv6 multicast crosses a veth pair inside a namespace.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use netspeaker::send::wav::write_wav;

const BIN: &str = env!("CARGO_BIN_EXE_netspeaker-send");

/// A receiver that joins the group on 127.0.0.1 and prints, per datagram,
/// its length and the TTL it arrived with.
const RECEIVER: &str = r#"
import socket, struct, sys
group, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
IP_RECVTTL, IP_TTL = 12, 2  # Linux values; not all Pythons name them
s.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
s.settimeout(5)
open(sys.argv[4], "w").close()
for _ in range(count):
    data, anc, _, _ = s.recvmsg(2048, 64)
    ttl = [struct.unpack("i", d[:4])[0] for (l, t, d) in anc if t == IP_TTL]
    print(len(data), ttl[0] if ttl else -1, flush=True)
"#;

fn multicast_run(interface: &str, ttl: &str) -> Vec<(usize, i32)> {
    let dir = std::env::temp_dir().join(format!(
        "ns-send-mc-{}-{}",
        interface.replace('.', "_"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(8000, 1, &[100; 1600])).unwrap();
    let py = dir.join("recv.py");
    std::fs::write(&py, RECEIVER).unwrap();
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let script = format!(
        "set -e
ip link set lo up
ip link set lo multicast on
ip route add 224.0.0.0/4 dev lo
python3 {py} 239.255.77.1 6000 10 {ready} &
r=$!
n=0
while [ ! -e {ready} ]; do sleep 0.05; n=$((n+1)); [ $n -lt 200 ] || exit 1; done
{bin} {wav} 239.255.77.1:6000 --codec pcma --ttl {ttl} --interface {interface} -q
wait $r",
        py = py.display(),
        ready = ready.display(),
        bin = BIN,
        wav = wav.display(),
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<i32>().unwrap());
            (f.next().unwrap() as usize, f.next().unwrap())
        })
        .collect()
}

#[test]
fn multicast_in_private_namespace_by_interface_name() {
    let got = multicast_run("lo", "3");
    assert_eq!(got.len(), 10);
    assert!(
        got.iter().all(|&(len, ttl)| len == 12 + 160 && ttl == 3),
        "{got:?}"
    );
}

#[test]
fn multicast_in_private_namespace_by_interface_address() {
    let got = multicast_run("127.0.0.1", "1");
    assert_eq!(got.len(), 10);
    assert!(
        got.iter().all(|&(len, ttl)| len == 12 + 160 && ttl == 1),
        "{got:?}"
    );
}

#[test]
fn ipv6_loopback_unicast() {
    let sock = UdpSocket::bind("[::1]:0").expect("IPv6 loopback (::1) for the IPv6 test");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dir = std::env::temp_dir().join(format!("ns-send-v6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(8000, 1, &[7; 320])).unwrap();
    let dest = sock.local_addr().unwrap().to_string();
    let status = Command::new(BIN)
        .args([
            wav.to_str().unwrap(),
            "--dest",
            &dest,
            "--codec",
            "pcmu",
            "-q",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let mut buf = [0u8; 512];
    for _ in 0..2 {
        assert_eq!(sock.recv(&mut buf).unwrap(), 12 + 160);
    }
}

/// No route to the destination (a namespace with only loopback): the
/// sender says so, keeps its pace and finishes normally instead of giving
/// up at startup.
#[test]
fn unreachable_network_is_reported_and_not_fatal() {
    let dir = std::env::temp_dir().join(format!("ns-send-unreach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(8000, 1, &[1; 1600])).unwrap();
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c"])
        .arg(format!(
            "ip link set lo up; exec {BIN} {} 10.9.9.9:5004 --codec pcmu",
            wav.display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("unreachable"), "{err}");
    assert!(err.contains("10 dropped"), "{err}");
}

/// Joins an IPv6 group on the named interface and prints, per datagram,
/// its length and the hop limit it arrived with.
const RECEIVER6: &str = r#"
import socket, struct, sys
group, port, count, iface = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[5]
IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT = 51, 52  # Linux values
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", port))
mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", socket.if_nametoindex(iface))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
s.settimeout(5)
open(sys.argv[4], "w").close()
for _ in range(count):
    data, anc, _, _ = s.recvmsg(2048, 64)
    hops = [struct.unpack("i", d[:4])[0] for (l, t, d) in anc if t == IPV6_HOPLIMIT]
    print(len(data), hops[0] if hops else -1, flush=True)
"#;

/// IPv6 multicast out of the interface `--interface` names, with the hop
/// limit `--ttl` sets: a veth pair inside a private namespace, the sender
/// on one end, the receiver joined on the other.
#[test]
fn ipv6_multicast_in_private_namespace() {
    let dir = std::env::temp_dir().join(format!("ns-send-mc6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("in.wav");
    std::fs::write(&wav, write_wav(8000, 1, &[100; 1600])).unwrap();
    let py = dir.join("recv6.py");
    std::fs::write(&py, RECEIVER6).unwrap();
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let script = format!(
        "set -e
ip link set lo up
ip link add va type veth peer name vb
ip link set va up
ip link set vb up
{wait}
python3 {py} ff15::77 6000 10 {ready} vb &
r=$!
n=0
while [ ! -e {ready} ]; do sleep 0.05; n=$((n+1)); [ $n -lt 200 ] || exit 1; done
{bin} {wav} [ff15::77]:6000 --codec pcmu --ttl 4 --interface va -q
wait $r",
        py = py.display(),
        ready = ready.display(),
        wait = common::WAIT_VETH_IPV6,
        bin = BIN,
        wav = wav.display(),
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Vec<&str> = stdout.lines().collect();
    assert_eq!(got.len(), 10, "{stdout}");
    assert!(got.iter().all(|l| *l == "172 4"), "{stdout}");
}
