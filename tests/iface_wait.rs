//! A multicast receiver whose `--interface` is not there yet (issue 14:
//! Wi-Fi or its DHCP address comes late at boot) waits for it and plays
//! once it appears, and plays again after the interface went down and up,
//! changed its address, or went away and came back.
//!
//! Two "hosts": network namespaces A (the real `netspeaker`, into ALSA's
//! `null` device) and B (a paced PCMU sender on a thread of this test that
//! entered B), joined by a veth pair `veth-a`/`veth-b` that the test
//! creates, breaks and recreates while both keep running. Multicast never
//! leaves the two namespaces (TESTING.md). Audio is judged by the
//! receiver's own `packets` count, read every ~15 ms with SIGUSR1; the
//! delays printed are from the test's command to the first packet seen
//! played, to that resolution.

mod common;

use common::receiver::{RunningReceiver, Stats};
use common::{AlsaConfig, TestDir};
use nix::sys::signal::Signal;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 14);
const PORT: u16 = 5004;

/// A network namespace held open by a sleeping process; removed (with
/// every interface in it) when the holder is killed on drop.
struct Netns {
    holder: Child,
}

impl Netns {
    fn new() -> Netns {
        let holder = Command::new("unshare")
            .args(["-n", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare -n (util-linux; needs root)");
        let ns = Netns { holder };
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(ns.path()).ok().as_ref() == Some(&ours) {
            assert!(
                Instant::now() < deadline,
                "unshare did not enter a namespace"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        ns.sh("ip link set lo up");
        ns
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid())
    }

    /// `nsenter` prefix that runs a program in this namespace.
    fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid().to_string(), "-n", "--"]);
        c
    }

    fn sh(&self, script: &str) {
        let out = self
            .enter()
            .args(["sh", "-ec", script])
            .output()
            .expect("nsenter (util-linux)");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Creates the veth pair (veth-a in A with `a_address`, veth-b in B),
/// both up, and B's route for multicast through veth-b.
fn connect(a: &Netns, b: &Netns, a_address: &str) {
    a.sh(&format!(
        "ip link add veth-a type veth peer name veth-b netns {}
ip addr add {a_address}/24 dev veth-a
ip link set veth-a up",
        b.pid()
    ));
    b.sh("ip addr add 10.77.0.2/24 dev veth-b
ip link set veth-b up
ip route add 224.0.0.0/4 dev veth-b");
}

/// Sends PCMU (20 ms packets, silence) to the group from inside `ns`
/// until `stop`, paced against absolute deadlines; send errors (no route
/// while the link is away) are ignored, as a real sender rides them out.
fn send_from(ns: &Netns, dest: SocketAddr, stop: &AtomicBool) {
    let file = std::fs::File::open(ns.path()).unwrap();
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("setns into the sender's namespace");
    let sock = UdpSocket::bind(if dest.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .unwrap();
    let mut packet = [0xffu8; 12 + 160];
    let start = Instant::now();
    let mut k: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = start + Duration::from_millis(20) * k;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        packet[0] = 0x80;
        packet[1] = 0;
        packet[2..4].copy_from_slice(&(k as u16).to_be_bytes());
        packet[4..8].copy_from_slice(&(k * 160).to_be_bytes());
        packet[8..12].copy_from_slice(&0x1414_1414u32.to_be_bytes());
        let _ = sock.send_to(&packet, dest);
        k += 1;
    }
}

/// Sets the flag when dropped: a failing check (a panic) inside the
/// thread scope must still stop the sender, or the scope waits forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The receiver's `packets` now: asks for a statistics line (SIGUSR1)
/// and reads it.
fn packets_now(rx: &RunningReceiver) -> f64 {
    let lines = |t: &str| t.lines().filter(|l| Stats::parse(l).is_some()).count();
    let before = lines(&rx.log_text());
    rx.signal(Signal::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = rx.log_text();
        if lines(&text) > before {
            return Stats::last_in(&text).map_or(f64::NAN, |s| s.get("packets"));
        }
        assert!(Instant::now() < deadline, "no statistics line:\n{text}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long after `since` the receiver's packet count passed `base`;
/// panics after `limit` with the log.
fn audio_after(
    rx: &RunningReceiver,
    since: Instant,
    base: f64,
    limit: Duration,
    what: &str,
) -> Duration {
    loop {
        if packets_now(rx) > base {
            let took = since.elapsed();
            eprintln!("{what}: audio after {} ms", took.as_millis());
            return took;
        }
        assert!(
            since.elapsed() < limit,
            "{what}: no audio within {limit:?}:\n{}",
            rx.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long after `since` the receiver's log first held `needle`;
/// panics after `limit` with the log. The main thread writes the log
/// lines, so this includes its wait for them (a few ms).
fn logged_after(rx: &RunningReceiver, since: Instant, needle: &str, limit: Duration) -> Duration {
    loop {
        if rx.log_text().contains(needle) {
            let took = since.elapsed();
            eprintln!("{needle}: after {} ms", took.as_millis());
            return took;
        }
        assert!(
            since.elapsed() < limit,
            "no '{needle}' within {limit:?}:\n{}",
            rx.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts the receiver in `a` on the IPv4 group (`--listen GROUP:PORT`,
/// as deploy/default/netspeaker shows, or `--group` with `by_group`),
/// `--interface` = `interface`, and checks it waits for it.
fn start_receiver(dir: &TestDir, a: &Netns, interface: &str, by_group: bool) -> RunningReceiver {
    let group = GROUP.to_string();
    let listen = if by_group {
        format!("0.0.0.0:{PORT}")
    } else {
        format!("{GROUP}:{PORT}")
    };
    let mut args = vec!["--listen", &listen, "--interface", interface];
    if by_group {
        args.extend(["--group", &group]);
    }
    start_receiver_with(dir, a, interface, &args)
}

fn start_receiver_with(
    dir: &TestDir,
    a: &Netns,
    interface: &str,
    net_args: &[&str],
) -> RunningReceiver {
    let alsa = AlsaConfig::write(&dir.path);
    let log = dir.file("rx.log");
    let nsenter_args = [
        "-t".to_string(),
        a.pid().to_string(),
        "-n".into(),
        "--".into(),
    ];
    let program = env!("CARGO_BIN_EXE_netspeaker").to_string();
    let mut args: Vec<&str> = nsenter_args.iter().map(String::as_str).collect();
    args.extend([
        program.as_str(),
        "--device",
        "null",
        "--no-mlock",
        "--rt-priority",
        "0",
        "--stats-interval",
        "0",
    ]);
    args.extend(net_args);
    let rx = RunningReceiver::start_program("nsenter", &args, &alsa.env(), log);
    assert!(
        rx.wait_for_log(
            &format!("waiting for interface {interface}"),
            Duration::from_secs(5)
        ),
        "{}",
        rx.log_text()
    );
    rx
}

#[test]
fn receiver_started_before_its_interface_plays_when_it_appears_and_after_down_up_address_change_and_recreation(
) {
    let dir = TestDir::new("iface-wait");
    let (a, b) = (Netns::new(), Netns::new());
    let mut rx = start_receiver(&dir, &a, "veth-a", false);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| send_from(&b, SocketAddrV4::new(GROUP, PORT).into(), &stop));
        // Boot: the interface comes 2 s after the receiver.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(packets_now(&rx), 0.0);
        let t = Instant::now();
        connect(&a, &b, "10.77.0.1");
        let appeared = audio_after(&rx, t, 0.0, Duration::from_secs(3), "appeared");

        // Down: the stream stops; up: it plays again.
        a.sh("ip link set veth-a down");
        std::thread::sleep(Duration::from_millis(400));
        let stalled = packets_now(&rx);
        std::thread::sleep(Duration::from_millis(300));
        let still = packets_now(&rx);
        assert!(
            still - stalled <= 1.0,
            "audio while down: {stalled} -> {still}"
        );
        let t = Instant::now();
        a.sh("ip link set veth-a up");
        let up = audio_after(&rx, t, still, Duration::from_secs(4), "down/up");

        // A new address (DHCP gave another).
        let base = packets_now(&rx);
        let t = Instant::now();
        a.sh("ip addr del 10.77.0.1/24 dev veth-a; ip addr add 10.77.0.3/24 dev veth-a");
        let readdressed = audio_after(&rx, t, base, Duration::from_secs(4), "address change");

        // Gone (driver reload, adapter unplugged) and back at a new index:
        // the case where only a rejoin brings the stream back.
        a.sh("ip link del veth-a");
        std::thread::sleep(Duration::from_millis(400));
        let base = packets_now(&rx);
        let t = Instant::now();
        connect(&a, &b, "10.77.0.1");
        let recreated = audio_after(&rx, t, base, Duration::from_secs(4), "recreated");

        assert!(
            appeared < Duration::from_secs(1),
            "appeared after {appeared:?}"
        );
        assert!(up < Duration::from_secs(2), "down/up: {up:?}");
        assert!(
            readdressed < Duration::from_secs(2),
            "address change: {readdressed:?}"
        );
        assert!(
            recreated < Duration::from_secs(1),
            "recreated: {recreated:?}"
        );
    });
    let (code, _, stats) = rx.stop();
    let log = rx.log_text();
    assert_eq!(code, Some(0), "{log}");
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    // Joined when it appeared and when it came back; rejoined when it
    // came up (after creation, after the down/up, after recreation: the
    // kernel may pass packets before it reports the carrier, so the last
    // may come after the receiver was stopped); the rejoins for
    // addresses are at debug level.
    assert_eq!(lines("net: joined multicast group"), 2, "{log}");
    let rejoined = lines("net: rejoined multicast group");
    assert!((2..=3).contains(&rejoined), "{log}");
    // No warning but the interface's state and the stream's.
    assert_eq!(
        lines("warn "),
        lines("is down") + lines("went away") + lines("stream lost"),
        "{log}"
    );
    assert!(log.contains("went away"), "{log}");
    assert!(!log.contains("cannot join"), "{log}");
    assert_eq!(stats.get("rt-allocs"), 0.0, "{log}");
    assert!(!log.contains("no such interface"), "{log}");
}

#[test]
fn receiver_on_an_interface_named_by_its_late_dhcp_address_joins_when_the_address_comes() {
    let dir = TestDir::new("iface-addr");
    let (a, b) = (Netns::new(), Netns::new());
    let mut rx = start_receiver(&dir, &a, "10.77.0.1", true);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| send_from(&b, SocketAddrV4::new(GROUP, PORT).into(), &stop));
        std::thread::sleep(Duration::from_secs(2));
        // The link is there but without the address: still waiting.
        a.sh(&format!(
            "ip link add veth-a type veth peer name veth-b netns {}
ip link set veth-a up",
            b.pid()
        ));
        b.sh("ip addr add 10.77.0.2/24 dev veth-b
ip link set veth-b up
ip route add 224.0.0.0/4 dev veth-b");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(packets_now(&rx), 0.0, "{}", rx.log_text());
        let t = Instant::now();
        a.sh("ip addr add 10.77.0.1/24 dev veth-a");
        let appeared = audio_after(&rx, t, 0.0, Duration::from_secs(3), "address came");

        // The lease lost and renewed: the address goes and comes back.
        a.sh("ip addr del 10.77.0.1/24 dev veth-a");
        std::thread::sleep(Duration::from_millis(400));
        let base = packets_now(&rx);
        let t = Instant::now();
        a.sh("ip addr add 10.77.0.1/24 dev veth-a");
        let renewed = audio_after(&rx, t, base, Duration::from_secs(4), "address renewed");
        assert!(
            appeared < Duration::from_secs(1),
            "appeared after {appeared:?}"
        );
        assert!(
            renewed < Duration::from_secs(2),
            "renewed after {renewed:?}"
        );
    });
    let (code, _, _) = rx.stop();
    let log = rx.log_text();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("went away"), "{log}");
    assert!(!log.contains("cannot join"), "{log}");
}

#[test]
fn ipv6_receiver_started_before_its_interface_plays_when_it_appears_and_when_it_returns() {
    let dir = TestDir::new("iface-v6");
    let (a, b) = (Netns::new(), Netns::new());
    let mut rx = start_receiver_with(
        &dir,
        &a,
        "veth-a",
        &["--listen", "[ff15::14]:5004", "--interface", "veth-a"],
    );
    // Global addresses without duplicate detection, so both ends can
    // send and receive at once; B routes the group through veth-b at
    // once (the kernel's own ff00::/8 route can come later, which would
    // be the sender's delay, not the receiver's).
    let connect6 = || {
        a.sh(&format!(
            "ip link add veth-a type veth peer name veth-b netns {}
ip -6 addr add fd00::a/64 dev veth-a nodad
ip link set veth-a up",
            b.pid()
        ));
        b.sh("ip -6 addr add fd00::b/64 dev veth-b nodad
ip link set veth-b up
ip -6 route add ff15::/16 dev veth-b");
    };
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| send_from(&b, "[ff15::14]:5004".parse().unwrap(), &stop));
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(packets_now(&rx), 0.0);
        let t = Instant::now();
        connect6();
        let appeared = audio_after(&rx, t, 0.0, Duration::from_secs(3), "v6 appeared");
        a.sh("ip link del veth-a");
        std::thread::sleep(Duration::from_millis(400));
        let base = packets_now(&rx);
        let t = Instant::now();
        connect6();
        let recreated = audio_after(&rx, t, base, Duration::from_secs(4), "v6 recreated");
        assert!(
            appeared < Duration::from_secs(1),
            "appeared after {appeared:?}"
        );
        assert!(
            recreated < Duration::from_secs(1),
            "recreated after {recreated:?}"
        );
    });
    let (code, _, _) = rx.stop();
    let log = rx.log_text();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("went away"), "{log}");
    assert!(!log.contains("cannot join"), "{log}");
}

/// Several streams (`--stream ...,group=...`, issue 14) on one
/// `--interface` that is not there yet: each stream waits for it with its
/// own link watch and joins its own group when it appears, and both play
/// within 1 s of it.
#[test]
fn two_streams_started_before_their_interface_both_play_when_it_appears() {
    const PAGE_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 15);
    const PAGE_PORT: u16 = PORT + 2;
    let dir = TestDir::new("iface-streams");
    let (a, b) = (Netns::new(), Netns::new());
    let music = format!("0.0.0.0:{PORT},group={GROUP},priority=1,name=music");
    let page = format!("0.0.0.0:{PAGE_PORT},group={PAGE_GROUP},priority=9,name=page");
    let mut rx = start_receiver_with(
        &dir,
        &a,
        "veth-a",
        &[
            "--stream",
            &music,
            "--stream",
            &page,
            "--interface",
            "veth-a",
        ],
    );
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| send_from(&b, SocketAddrV4::new(GROUP, PORT).into(), &stop));
        s.spawn(|| send_from(&b, SocketAddrV4::new(PAGE_GROUP, PAGE_PORT).into(), &stop));
        // Boot: the interface comes 2 s after the receiver.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(packets_now(&rx), 0.0, "{}", rx.log_text());
        // Judged from when both ends are set up: the setup itself (`ip`
        // in two namespaces) can take long on a busy machine (the kernel's
        // rtnl lock, which other tests' namespace teardown takes, is a
        // likely cause: not measured), and the sender has no route before
        // B's end is up.
        let asked = Instant::now();
        connect(&a, &b, "10.77.0.1");
        let t = Instant::now();
        eprintln!("veth pair set up in {} ms", (t - asked).as_millis());
        let limit = Duration::from_secs(3);
        let music_at = logged_after(&rx, t, "stream music (priority 1): stream started", limit);
        let page_at = logged_after(&rx, t, "stream page (priority 9): stream started", limit);
        assert!(
            music_at < Duration::from_secs(1),
            "music after {music_at:?}:\n{}",
            rx.log_text()
        );
        assert!(
            page_at < Duration::from_secs(1),
            "page after {page_at:?}:\n{}",
            rx.log_text()
        );
    });
    let (code, _, stats) = rx.stop();
    let log = rx.log_text();
    assert_eq!(code, Some(0), "{log}");
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    // Both streams waited, and each joined its own group once.
    assert_eq!(lines("waiting for interface veth-a"), 2, "{log}");
    for group in [GROUP, PAGE_GROUP] {
        assert_eq!(
            lines(&format!(
                "net: joined multicast group {group} on interface veth-a"
            )),
            1,
            "{group}\n{log}"
        );
    }
    assert!(!log.contains("cannot join"), "{log}");
    assert!(!log.contains("no such interface"), "{log}");
    assert_eq!(stats.get("rt-allocs"), 0.0, "{log}");
}
