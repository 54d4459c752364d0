//! What lands where: deploy/install.sh and deploy/uninstall.sh run against a
//! private root directory (`--root`) with fake binaries, and the systemd
//! units are checked offline with systemd-analyze (verify, and the
//! security exposure bar of 2.0).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const UNITS: [&str; 3] = [
    "netspeaker.service",
    "netspeaker-send.service",
    "netspeaker-send@.service",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "netspeaker-deploy-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Stand-ins for the built binaries, each with recognisable content.
fn fake_bins(s: &Scratch, version: &str) -> PathBuf {
    let dir = s.path("bin");
    fs::create_dir_all(&dir).expect("bin dir");
    for b in ["netspeaker", "netspeaker-send"] {
        let p = dir.join(b);
        fs::write(&p, format!("#!/bin/sh\necho {b} {version}\n")).expect("fake binary");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir
}

fn script(name: &str, args: &[&Path]) -> Output {
    Command::new("bash")
        .arg(repo().join("deploy").join(name))
        .args(args)
        .output()
        .expect("run bash")
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn install(root: &Path, bins: &Path) -> String {
    install_with(root, bins, &[])
}

/// install.sh --root ROOT --bin-dir BINS with more options; its stdout.
fn install_with(root: &Path, bins: &Path, more: &[&str]) -> String {
    let mut args = vec![Path::new("--root"), root, Path::new("--bin-dir"), bins];
    args.extend(more.iter().map(Path::new));
    ok(script("install.sh", &args))
}

/// `systemd-analyze verify` finds nothing in the unit file at `unit`
/// (it exits 0 on warnings too: any output is a finding).
fn assert_verifies(unit: &Path, what: &str) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "{what}: {findings}"
    );
}

/// Every file under `root`, as "/relative/path".
fn files(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).expect("read dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                let rel = p.strip_prefix(root).expect("under root");
                out.insert(format!("/{}", rel.display()));
            }
        }
    }
    let mut out = BTreeSet::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

/// (path on the target, mode, source in the repository or bin dir)
fn expected(bins: &Path) -> Vec<(String, u32, PathBuf)> {
    let mut v = vec![
        (
            "/usr/local/bin/netspeaker".to_owned(),
            0o755,
            bins.join("netspeaker"),
        ),
        (
            "/usr/local/bin/netspeaker-send".to_owned(),
            0o755,
            bins.join("netspeaker-send"),
        ),
        (
            "/usr/local/share/doc/netspeaker/PI.md".to_owned(),
            0o644,
            repo().join("deploy/PI.md"),
        ),
        (
            "/etc/default/netspeaker".to_owned(),
            0o644,
            repo().join("deploy/default/netspeaker"),
        ),
        (
            "/etc/default/netspeaker-send".to_owned(),
            0o644,
            repo().join("deploy/default/netspeaker-send"),
        ),
    ];
    for u in UNITS {
        v.push((
            format!("/etc/systemd/system/{u}"),
            0o644,
            repo().join("systemd").join(u),
        ));
    }
    v
}

#[test]
fn install_into_root_places_every_file() {
    let s = Scratch::new("install");
    let bins = fake_bins(&s, "1");
    let root = s.path("root");
    let stdout = install(&root, &bins);

    let want = expected(&bins);
    let names: BTreeSet<String> = want.iter().map(|w| w.0.clone()).collect();
    assert_eq!(files(&root), names);
    for (rel, m, src) in &want {
        let p = root.join(rel.trim_start_matches('/'));
        assert_eq!(mode(&p), *m, "mode of {rel}");
        assert_eq!(
            fs::read(&p).expect("installed"),
            fs::read(src).expect("source"),
            "content of {rel}"
        );
    }
    // Nothing is run in --root mode; what would be is shown, in order.
    let would: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("would run: "))
        .collect();
    assert_eq!(
        would,
        [
            "useradd --system --user-group --groups audio --no-create-home \
             --home-dir /nonexistent --shell /usr/sbin/nologin netspeaker",
            "systemctl daemon-reload",
            "systemctl enable netspeaker.service",
            "systemctl restart netspeaker.service",
        ]
    );
}

#[test]
fn install_twice_updates_binaries_and_keeps_edited_defaults() {
    let s = Scratch::new("twice");
    let root = s.path("root");
    install(&root, &fake_bins(&s, "1"));
    let edited = "NETSPEAKER_OPTS=\"--listen 0.0.0.0:6000 --device plughw:CARD=Device\"\n";
    fs::write(root.join("etc/default/netspeaker"), edited).expect("edit");
    let before = files(&root);

    let bins = fake_bins(&s, "2");
    let stdout = install(&root, &bins);
    assert!(stdout.contains("kept /etc/default/netspeaker "), "{stdout}");
    assert_eq!(files(&root), before);
    assert_eq!(
        fs::read_to_string(root.join("etc/default/netspeaker")).expect("kept"),
        edited
    );
    assert_eq!(
        fs::read_to_string(root.join("usr/local/bin/netspeaker")).expect("updated"),
        "#!/bin/sh\necho netspeaker 2\n"
    );
    // The unedited one is kept too (it is the admin's file once installed).
    assert_eq!(
        fs::read(root.join("etc/default/netspeaker-send")).expect("kept"),
        fs::read(repo().join("deploy/default/netspeaker-send")).expect("source")
    );
}

#[test]
fn uninstall_removes_what_install_put_there() {
    let s = Scratch::new("uninstall");
    let root = s.path("root");
    // Someone else's file must survive.
    fs::create_dir_all(root.join("etc/default")).expect("dir");
    fs::write(root.join("etc/default/keyboard"), "XKBLAYOUT=us\n").expect("other");
    install(&root, &fake_bins(&s, "1"));
    fs::write(
        root.join("etc/default/netspeaker-send-kitchen"),
        "NETSPEAKER_SEND_OPTS=x\n",
    )
    .expect("instance");

    let stdout = ok(script("uninstall.sh", &[Path::new("--root"), &root]));
    assert!(stdout
        .contains("would run: systemctl disable --now netspeaker.service netspeaker-send.service"));
    let left: Vec<String> = files(&root).into_iter().collect();
    assert_eq!(
        left,
        [
            "/etc/default/keyboard",
            "/etc/default/netspeaker",
            "/etc/default/netspeaker-send",
            "/etc/default/netspeaker-send-kitchen"
        ]
    );
    assert!(!root.join("usr/local/share/doc/netspeaker").exists());

    let stdout = ok(script(
        "uninstall.sh",
        &[Path::new("--purge"), Path::new("--root"), &root],
    ));
    assert!(stdout.contains("would run: userdel netspeaker"), "{stdout}");
    let left: Vec<String> = files(&root).into_iter().collect();
    assert_eq!(left, ["/etc/default/keyboard"]);
}

#[test]
fn install_with_srtp_key_makes_a_private_key_and_credential_dropins() {
    let s = Scratch::new("srtp");
    let bins = fake_bins(&s, "1");
    let root = s.path("root");
    let stdout = install_with(&root, &bins, &["--srtp-key", "--sender"]);
    let key_path = root.join("etc/netspeaker/srtp.key");
    assert_eq!(mode(&key_path), 0o600);
    assert_eq!(mode(&root.join("etc/netspeaker")), 0o700);
    let key = fs::read_to_string(&key_path).expect("key");
    // What both programs read: 30 bytes in base64.
    let master = netspeaker::rtp::srtp::MasterKey::parse(&key).expect("a usable key");
    assert_eq!(master.to_base64(), key.trim());
    assert!(
        stdout.contains(key.trim()),
        "printed for the sender: {stdout}"
    );
    for (unit, exec) in [
        ("netspeaker.service", "netspeaker $NETSPEAKER_OPTS"),
        (
            "netspeaker-send.service",
            "netspeaker-send $NETSPEAKER_SEND_OPTS",
        ),
    ] {
        let dropin = root.join(format!("etc/systemd/system/{unit}.d/srtp.conf"));
        assert_eq!(mode(&dropin), 0o644);
        let text = fs::read_to_string(&dropin).expect("drop-in");
        assert!(
            text.contains("\nLoadCredential=srtp.key:/etc/netspeaker/srtp.key\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "\nExecStart=\nExecStart=/usr/local/bin/{exec} \
                 --srtp-key-file ${{CREDENTIALS_DIRECTORY}}/srtp.key\n"
            )),
            "{text}"
        );
        // The unit with its drop-in verifies clean and stays within the
        // exposure bar (verify reads the drop-in's lines appended).
        let merged = unit_for_verify(&s, unit);
        let dropin_service = text
            .split_once("[Service]")
            .map(|(_, rest)| rest)
            .expect("[Service]")
            .replace("/usr/local/bin/", &format!("{}/", s.path("bin").display()));
        let mut unit_text = fs::read_to_string(&merged).expect("unit");
        unit_text.push_str(&format!("\n[Service]{dropin_service}"));
        fs::write(&merged, unit_text).expect("merged unit");
        assert_verifies(&merged, &format!("{unit} with srtp.conf"));
    }

    // Again: the key stays (senders that have it keep working).
    let stdout = install_with(&root, &bins, &["--srtp-key"]);
    assert!(stdout.contains("kept /etc/netspeaker/srtp.key"), "{stdout}");
    assert_eq!(fs::read_to_string(&key_path).expect("key"), key);

    // Uninstall takes the drop-ins; the key goes only with --purge.
    ok(script("uninstall.sh", &[Path::new("--root"), &root]));
    assert!(!root
        .join("etc/systemd/system/netspeaker.service.d")
        .exists());
    assert!(key_path.exists());
    ok(script(
        "uninstall.sh",
        &[Path::new("--purge"), Path::new("--root"), &root],
    ));
    assert!(!root.join("etc/netspeaker").exists());
}

#[test]
fn install_with_ntp_server_points_chrony_at_it_and_orders_the_receiver_after_time_sync() {
    let s = Scratch::new("ntp");
    let bins = fake_bins(&s, "1");
    let root = s.path("root");
    let stdout = install_with(&root, &bins, &["--ntp-server", "clock.lan"]);
    for line in [
        "would run: apt-get install -y --no-install-recommends chrony",
        "would run: systemctl enable chrony.service chrony-wait.service",
        "would run: systemctl restart chrony.service",
    ] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }
    let chrony = root.join("etc/chrony/conf.d/netspeaker.conf");
    assert_eq!(mode(&chrony), 0o644);
    let text = fs::read_to_string(&chrony).expect("chrony conf");
    assert!(
        text.lines()
            .any(|l| l == "server clock.lan iburst minpoll 4 maxpoll 6 prefer"),
        "{text}"
    );
    let dropin = root.join("etc/systemd/system/netspeaker.service.d/time-sync.conf");
    let text = fs::read_to_string(&dropin).expect("drop-in");
    assert!(
        text.contains("[Unit]\nWants=time-sync.target\nAfter=time-sync.target\n"),
        "{text}"
    );
    // The unit with its drop-in verifies clean.
    let merged = unit_for_verify(&s, "netspeaker.service");
    let unit_part = text.split_once("[Unit]").map(|(_, u)| u).expect("[Unit]");
    let unit_text = fs::read_to_string(&merged).expect("unit").replacen(
        "[Unit]",
        &format!("[Unit]{unit_part}"),
        1,
    );
    fs::write(&merged, unit_text).expect("merged unit");
    assert_verifies(&merged, "netspeaker.service with time-sync.conf");

    // A value that is not one host is refused before anything is written.
    let bad_root = s.path("bad");
    let out = script(
        "install.sh",
        &[
            Path::new("--root"),
            &bad_root,
            Path::new("--bin-dir"),
            &bins,
            Path::new("--ntp-server"),
            Path::new("clock.lan iburst\nserver evil"),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a host name or address"),
        "{out:?}"
    );
    assert!(!bad_root.exists());

    // Uninstall takes the server line and the drop-in (chrony stays).
    let stdout = ok(script("uninstall.sh", &[Path::new("--root"), &root]));
    assert!(!chrony.exists() && !dropin.exists(), "{stdout}");
    assert!(
        stdout.contains("would run: systemctl restart chrony.service"),
        "{stdout}"
    );
}

#[test]
fn install_without_binaries_fails_clearly() {
    let s = Scratch::new("nobins");
    let empty = s.path("empty");
    fs::create_dir_all(&empty).expect("dir");
    let out = script(
        "install.sh",
        &[
            Path::new("--root"),
            &s.path("root"),
            Path::new("--bin-dir"),
            &empty,
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("netspeaker is missing"), "{err}");
    assert!(files(&s.path("root")).is_empty());
}

#[test]
fn install_needs_exactly_one_destination() {
    let s = Scratch::new("modes");
    let bins = fake_bins(&s, "1");
    for args in [
        vec![Path::new("--bin-dir"), &bins],
        vec![
            Path::new("--local"),
            Path::new("--root"),
            &s.0,
            Path::new("--bin-dir"),
            &bins,
        ],
    ] {
        let out = script("install.sh", &args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("exactly one of"), "{err}");
    }
}

/// The variable each unit passes to its program is the one its default
/// file sets (sourced the way EnvironmentFile= reads simple assignments).
#[test]
fn default_files_set_the_units_variables() {
    for (unit, default, var) in [
        ("netspeaker.service", "netspeaker", "NETSPEAKER_OPTS"),
        (
            "netspeaker-send.service",
            "netspeaker-send",
            "NETSPEAKER_SEND_OPTS",
        ),
        (
            "netspeaker-send@.service",
            "netspeaker-send",
            "NETSPEAKER_SEND_OPTS",
        ),
    ] {
        let text = fs::read_to_string(repo().join("systemd").join(unit)).expect("unit");
        let exec = text
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .expect("ExecStart");
        assert!(exec.ends_with(&format!(" ${var}")), "{unit}: {exec}");
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -eu; . \"$1\"; printf %s \"${var}\""))
            .arg("bash")
            .arg(repo().join("deploy/default").join(default))
            .output()
            .expect("bash");
        let value = ok(out);
        assert!(value.starts_with("--"), "{default}: {var}={value:?}");
    }
}

/// A copy of the unit whose ExecStart points at an executable that exists,
/// because verify checks it (the real path is on the Pi).
fn unit_for_verify(s: &Scratch, unit: &str) -> PathBuf {
    let bin = s.path("bin");
    fs::create_dir_all(&bin).expect("dir");
    for b in ["netspeaker", "netspeaker-send"] {
        fs::copy("/bin/true", bin.join(b)).expect("copy /bin/true");
    }
    let text = fs::read_to_string(repo().join("systemd").join(unit)).expect("unit");
    let text = text.replace("/usr/local/bin/", &format!("{}/", bin.display()));
    // A template is verified as one of its instances.
    let name = unit.replace("@.", "@kitchen.");
    let p = s.path(&name);
    fs::write(&p, text).expect("write unit");
    p
}

#[test]
fn units_verify_clean() {
    let s = Scratch::new("verify");
    for unit in UNITS {
        assert_verifies(&unit_for_verify(&s, unit), unit);
    }
}

#[test]
fn units_exposure_at_most_2_and_the_receiver_may_read_the_clock_state() {
    for unit in UNITS {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(repo().join("systemd").join(unit))
            .output()
            .expect("systemd-analyze");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("{unit}: no exposure line in\n{text}"));
        // "→ Overall exposure level for netspeaker.service: 1.9 OK 🙂"
        let level: f64 = line
            .rsplit(": ")
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: cannot read {line:?}"));
        // The receiver goes without ProtectClock= (0.2): it must read the
        // kernel's clock state (see the comment in its unit).
        let bar = if unit == "netspeaker.service" {
            2.1
        } else {
            2.0
        };
        assert!(level <= bar, "{unit}: exposure {level} > {bar}\n{text}");
    }
    let receiver = std::fs::read_to_string(repo().join("systemd/netspeaker.service"))
        .expect("read netspeaker.service");
    assert!(
        !receiver
            .lines()
            .any(|l| l.trim_start().starts_with("ProtectClock=")),
        "ProtectClock= makes adjtimex() fail with EPERM, also read-only"
    );
}

/// Every shell script of the tree: `*.sh` anywhere but build output and
/// `.git`, and `.ci/run`. Found by walking, not listed, so a new script is
/// checked without anyone remembering to add it here.
fn shell_scripts() -> Vec<PathBuf> {
    fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let path = entry.path();
            let rel = rel.join(&name);
            if path.is_dir() {
                if name != "target" && name != ".git" {
                    walk(&path, &rel, out);
                }
            } else if rel.extension().is_some_and(|e| e == "sh") {
                out.push(rel);
            }
        }
    }
    let mut scripts = vec![PathBuf::from(".ci/run")];
    walk(repo(), Path::new(""), &mut scripts);
    scripts.sort();
    scripts
}

#[test]
fn scripts_pass_shellcheck() {
    let scripts = shell_scripts();
    for expected in [
        "deploy/install.sh",
        "deploy/demo.sh",
        "tests/run-all.sh",
        "fuzz/run.sh",
    ] {
        assert!(
            scripts.contains(&PathBuf::from(expected)),
            "{expected} not found among {scripts:?}"
        );
    }
    let out = Command::new("shellcheck")
        .args(&scripts)
        .current_dir(repo())
        .output()
        .expect("shellcheck (apt-get install shellcheck)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The ssh mode end to end, with `ssh` and `sudo` stand-ins on PATH: `ssh`
/// runs the remote command here (and logs it), `sudo` turns the remote
/// `--local` into `--root DIR`, so what the Pi would get lands in DIR.
#[test]
fn install_and_uninstall_over_ssh() {
    let s = Scratch::new("ssh");
    let bins = fake_bins(&s, "1");
    let root = s.path("root");
    let fakes = s.path("fakes");
    fs::create_dir_all(&fakes).expect("dir");
    let log = s.path("ssh.log");
    let ssh = "#!/usr/bin/env bash\n\
        while [ \"${1:-}\" != \"${1#-}\" ]; do shift; done\n\
        host=$1; shift\n\
        printf '%s\\t%s\\n' \"$host\" \"$*\" >>\"$SSH_LOG\"\n\
        if [ \"$*\" = 'uname -m' ]; then echo aarch64; exit; fi\n\
        exec bash -c \"$*\"\n";
    let sudo = "#!/usr/bin/env bash\n\
        args=()\n\
        for a in \"$@\"; do\n\
        if [ \"$a\" = --local ]; then args+=(--root \"$FAKE_ROOT\"); else args+=(\"$a\"); fi\n\
        done\n\
        exec \"${args[@]}\"\n";
    for (name, text) in [("ssh", ssh), ("sudo", sudo)] {
        let p = fakes.join(name);
        fs::write(&p, text).expect("fake");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let path = format!(
        "{}:{}",
        fakes.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |name: &str, args: &[&Path]| {
        ok(Command::new("bash")
            .arg(repo().join("deploy").join(name))
            .args(args)
            .env("PATH", &path)
            .env("SSH_LOG", &log)
            .env("FAKE_ROOT", &root)
            .output()
            .expect("bash"))
    };

    let out = run(
        "install.sh",
        &[Path::new("--bin-dir"), &bins, Path::new("pi@speaker")],
    );
    assert!(
        out.contains("would run: systemctl restart netspeaker.service"),
        "{out}"
    );
    let want: BTreeSet<String> = expected(&bins).into_iter().map(|w| w.0).collect();
    assert_eq!(files(&root), want);
    assert_eq!(
        fs::read_to_string(root.join("usr/local/bin/netspeaker-send")).expect("shipped"),
        "#!/bin/sh\necho netspeaker-send 1\n"
    );

    let out = run("uninstall.sh", &[Path::new("pi@speaker")]);
    assert!(out.contains("removed /usr/local/bin/netspeaker"), "{out}");
    let left: Vec<String> = files(&root).into_iter().collect();
    assert_eq!(
        left,
        ["/etc/default/netspeaker", "/etc/default/netspeaker-send"]
    );

    // Every command went to the named host, and the staging directories
    // made there are gone.
    let log = fs::read_to_string(&log).expect("ssh log");
    assert!(log.lines().all(|l| l.starts_with("pi@speaker\t")), "{log}");
    let staged: Vec<&str> = log
        .split('\'')
        .filter(|w| w.starts_with("/tmp/netspeaker-"))
        .collect();
    assert!(staged.len() >= 2, "{log}");
    for dir in staged {
        let dir = dir.split('/').take(3).collect::<Vec<_>>().join("/");
        assert!(!Path::new(&dir).exists(), "{dir} left behind");
    }
}
