//! netspeaker: plays a live audio stream arriving over UDP (RTP L16/PCMU/
//! PCMA or headerless PCM) through ALSA. This file only parses options
//! and wires the stages together: net thread → SPSC queue → playout
//! thread (jitter buffer … ALSA); the main thread runs
//! `service::supervise` (signals, systemd notify/watchdog, the statistics
//! line, draining the playout thread's events).

use netspeaker::alsa::playback::Access;
use netspeaker::audio::format::{parse_raw, parse_rtp_format, PayloadMap, StreamFormat};
use netspeaker::net::link::LinkEvent;
use netspeaker::net::{Cidr, NetConfig, NetCounters, Receiver};
use netspeaker::receive::engine::{Latency, PlayoutConfig};
use netspeaker::receive::events::EventLog;
use netspeaker::receive::playout::{self, Event, StreamInput};
use netspeaker::receive::priority::{ArbiterConfig, Duck, MAX_STREAMS};
use netspeaker::receive::stats::{PlayoutStats, StatsLine};
use netspeaker::receive::streams::StreamSpec;
use netspeaker::receive::sync::SyncConfig;
use netspeaker::rtp::srtp::{MasterKey, SrtpContext, Suite};
use netspeaker::rtp::{InputMode, PacketParser};
use netspeaker::service::log::{self as logging, LogTarget};
use netspeaker::service::notify::{Heartbeat, Notifier, WatchdogGate};
use netspeaker::service::signals::{Handled, Signals};
use netspeaker::service::usage::{self, number};
use netspeaker::service::{self, Callbacks, Poll};
use std::net::SocketAddr;

/// Counts what the realtime threads allocate after start-up (shown on the
/// statistics line as `rt-allocs`).
#[global_allocator]
static ALLOCATOR: netspeaker::service::alloc::Counting = netspeaker::service::alloc::Counting;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const USAGE: &str = "\
netspeaker — play a live UDP audio stream (RTP or raw PCM) through ALSA

Usage: netspeaker [OPTIONS]

Network:
  --listen ADDR:PORT        address to receive on, IPv4 or IPv6; a multicast
                            address joins that group (as --group)
                            [default: 0.0.0.0:5004; 0.0.0.0:5005 with --raw]
  --group ADDR              join this multicast group
  --interface NAME|ADDR     interface for the multicast group [default: any];
                            one not there yet is waited for, and the group
                            is rejoined when it comes back or changes
  --allow CIDR              accept packets only from these sources (repeatable)
                            [default: any source]
  --recv-buffer BYTES       socket receive buffer for bursts [default: 1048576]
  --stream ADDR:PORT[,priority=N][,group=ADDR][,srtp-key-file=FILE]
           [,rtp-format=PT=ENC/RATE[/CH]][,name=NAME]
                            one of several streams (repeatable, up to 8), each
                            on its own socket with its own source lock and
                            jitter buffer: the playing stream of the highest
                            priority (0-9, default 0) owns the speaker, the
                            others are ducked; equal priorities: the one
                            already playing keeps it. group= joins a multicast
                            group, srtp-key-file= takes only SRTP with that
                            key, rtp-format= (repeatable) adds payload types
                            to the global ones, name= names it in the log and
                            statistics line [default: its ADDR:PORT]. Instead
                            of --listen, --group and --raw; --interface,
                            --allow, --recv-buffer, --rtp-format and
                            --srtp-key-file apply to every stream
  --duck-db DB|off          how far streams that do not own the speaker are
                            turned down (faded over 20 ms), or off to mute
                            them [default: -30]
  --hold-ms MS              quiet time after which the owning stream gives
                            the speaker back [default: 1000]
  --no-rtcp                 do not listen on the RTP port + 1 for the senders'
                            RTCP reports (RTCP on the RTP port itself, RFC
                            5761 rtcp-mux, is read either way) [default:
                            listen there too, RTP only]
  --sap [NAME]              take group, port and format from a SAP (RFC 2974)
                            announcement, as PulseAudio's module-rtp-send and
                            PipeWire make them: the session whose name matches
                            NAME (a glob: * and ?), or the only one announced;
                            waits for it, follows re-announcements, stops on
                            its deletion and plays it again when it returns
                            (listens on 224.0.0.56, 224.2.127.254,
                            239.255.255.255 and ff0X::2:7ffe, port 9875)
Stream:
  --rtp-format PT=ENC/RATE[/CH]
                            declare a dynamic RTP payload type, e.g.
                            96=L16/48000/2 (repeatable; ENC: L16, PCMU, PCMA,
                            OPUS as OPUS/48000/2 or OPUS/48000/1)
                            [static: 0 PCMU/8000, 8 PCMA/8000, 10 L16/44100/2,
                            11 L16/44100/1]
  --raw FORMAT:RATE:CH      headerless PCM instead of RTP, e.g. s16le:8000:1
                            (FORMAT: s16le, s16be, ulaw, alaw)
  --srtp-key-file FILE      accept only SRTP (RFC 3711) sent with the key in
                            FILE: the 40 base64 characters of master key and
                            salt (as ffmpeg's -srtp_out_params and SDP's
                            a=crypto inline:); FILE must be mode 0600 or 0400
  --srtp-suite SUITE        AES_CM_128_HMAC_SHA1_80 or AES_CM_128_HMAC_SHA1_32
                            [default: AES_CM_128_HMAC_SHA1_80]
Playout:
  --latency auto|MS         target playout delay: adaptive to the measured
                            jitter, or fixed milliseconds [default: auto]
  --latency-ms MS           same as --latency MS
  --min-latency-ms MS       lower bound of the adaptive target [default: 5]
  --max-latency-ms MS       upper bound of the adaptive target [default: 300]
  --clock-follow on|off     follow the sender's clock (resample) and reach
                            target changes by time-stretching [default: on]
  --stream-lost-ms MS       silence after which the stream counts as lost
                            [default: 500]
  --sync-ms MS              sync mode: play every frame MS after the sender
                            captured it, on the sender's wall clock (from its
                            RTCP sender reports) against this machine's (kept
                            by chrony or PTP), timed at the DAC; receivers
                            with the same MS play in step within 0.1 ms.
                            Without sender reports, or with a clock the
                            kernel calls unsynchronised, plays adaptively and
                            says why [default: off]
  --sync-trust-clock        sync mode even when the kernel says the clock is
                            unsynchronised (one machine; a clock disciplined
                            by other means)
ALSA:
  --device NAME             ALSA playback device [default: default]
  --access rw|mmap          read/write or mmap transfers [default: rw]
  --period-ms MS            ALSA period [default: 5]
  --buffer-periods N        ALSA buffer size in periods [default: 4]
  --device-rate HZ          the device rate every stream is converted to
                            [default: the device's own: 48000 where offered]
  --device-channels N       the device channel count [default: the device's
                            own: 2 where offered]
  --rt-priority N           SCHED_FIFO priority of the playout thread, 0 for
                            none [default: 70]
  --no-mlock                do not lock memory
Process:
  --stats-interval SECONDS  statistics line period, 0 for none [default: 10]
  --syslog                  log to syslog (automatic under systemd)
  -v, --verbose             more log detail (repeatable)
  -q, --quiet               less log detail (repeatable)
  -h, --help                this text
  -V, --version             the version

Signals: SIGTERM/SIGINT stop, SIGHUP reopens the device, SIGUSR1 prints
the statistics line now.
";

struct Options {
    /// `--sap [NAME]`: `Some(None)` takes any session.
    sap: Option<Option<String>>,
    net: NetConfig,
    listen_given: bool,
    no_rtcp: bool,
    payload_map: PayloadMap,
    raw: Option<StreamFormat>,
    srtp_key_file: Option<std::path::PathBuf>,
    srtp_suite: Option<Suite>,
    /// `--stream`s; empty: the one stream of `--listen`.
    streams: Vec<StreamSpec>,
    arbiter: ArbiterConfig,
    playout: PlayoutConfig,
    device_rate: Option<u32>,
    device_channels: Option<u16>,
    min_latency_ms: u32,
    max_latency_ms: u32,
    fixed_latency_ms: Option<u32>,
    sync_ms: Option<u32>,
    sync_trust_clock: bool,
    stats_interval: Duration,
    syslog: bool,
    verbose: u8,
    quiet: u8,
}

fn parse_args() -> Result<Option<Options>, usage::Error> {
    use lexopt::prelude::*;
    let mut o = Options {
        sap: None,
        net: NetConfig::default(),
        listen_given: false,
        no_rtcp: false,
        payload_map: PayloadMap::default(),
        raw: None,
        srtp_key_file: None,
        srtp_suite: None,
        streams: Vec::new(),
        arbiter: ArbiterConfig::default(),
        playout: PlayoutConfig::default(),
        device_rate: None,
        device_channels: None,
        min_latency_ms: 5,
        max_latency_ms: 300,
        fixed_latency_ms: None,
        sync_ms: None,
        sync_trust_clock: false,
        stats_interval: Duration::from_secs(10),
        syslog: false,
        verbose: 0,
        quiet: 0,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        let name = match &arg {
            Long(l) => format!("--{l}"),
            Short(s) => format!("-{s}"),
            Value(v) => {
                return Err(usage::Error::rule(format!(
                    "unexpected argument '{}'",
                    v.to_string_lossy()
                )))
            }
        };
        let mut value = || usage::text(&mut parser, &name);
        match name.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("netspeaker {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "-v" | "--verbose" => o.verbose += 1,
            "-q" | "--quiet" => o.quiet += 1,
            "--syslog" => o.syslog = true,
            "--no-rtcp" => o.no_rtcp = true,
            "--sync-ms" => {
                o.sync_ms = Some(number("--sync-ms", &value()?, 1..=5000)?);
            }
            "--sync-trust-clock" => o.sync_trust_clock = true,
            "--listen" => {
                let v = value()?;
                o.net.listen = v.parse::<SocketAddr>().map_err(|_| {
                    usage::Error::value(
                        "--listen",
                        format!("'{v}' is not ADDR:PORT (e.g. 0.0.0.0:5004 or [::]:5004)"),
                    )
                })?;
                o.listen_given = true;
            }
            "--group" => {
                let v = value()?;
                let addr = v.parse::<std::net::IpAddr>().map_err(|_| {
                    usage::Error::value("--group", format!("'{v}' is not an IP address"))
                })?;
                if !addr.is_multicast() {
                    return Err(usage::Error::value(
                        "--group",
                        format!("{addr} is not a multicast address (224.0.0.0/4 or ff00::/8)"),
                    ));
                }
                o.net.group = Some(addr);
            }
            "--interface" => o.net.interface = Some(value()?),
            "--stream" => o
                .streams
                .push(StreamSpec::parse(&value()?).map_err(|e| usage::Error::rule(e.to_string()))?),
            "--duck-db" => o.arbiter.duck = parse_duck(&value()?)?,
            "--hold-ms" => o.arbiter.hold_ms = number("--hold-ms", &value()?, 0..=600_000)?,
            "--sap" => {
                // NAME is optional: `--sap=NAME`, or the next argument when
                // it is not an option (the receiver takes no positional
                // arguments).
                let name = match parser.optional_value() {
                    Some(v) => Some(v.into_string().map_err(|_| {
                        usage::Error::value("--sap", "the name is not valid UTF-8 text")
                    })?),
                    None => match parser.try_raw_args() {
                        Some(mut raw) => match raw.peek().and_then(|v| v.to_str()) {
                            Some(v) if !v.starts_with('-') => {
                                let v = v.to_string();
                                raw.next();
                                Some(v)
                            }
                            _ => None,
                        },
                        None => None,
                    },
                };
                o.sap = Some(name);
            }
            "--allow" => {
                let v = value()?;
                let cidr = v
                    .parse::<Cidr>()
                    .map_err(|e| usage::Error::value("--allow", e.to_string()))?;
                o.net.allow.push(cidr);
            }
            "--recv-buffer" => {
                o.net.recv_buffer_bytes = number("--recv-buffer", &value()?, 4096..=64 << 20)?
            }
            "--rtp-format" => {
                let (pt, f) = parse_rtp_format(&value()?)
                    .map_err(|e| usage::Error::value("--rtp-format", e.to_string()))?;
                o.payload_map.set(pt, f);
            }
            "--raw" => {
                o.raw = Some(
                    parse_raw(&value()?)
                        .map_err(|e| usage::Error::value("--raw", e.to_string()))?,
                )
            }
            "--srtp-key-file" => o.srtp_key_file = Some(value()?.into()),
            "--srtp-suite" => {
                o.srtp_suite =
                    Some(Suite::parse(&value()?).map_err(|e| usage::Error::rule(e.to_string()))?)
            }
            "--latency" => {
                let v = value()?;
                o.fixed_latency_ms = if v == "auto" {
                    None
                } else {
                    Some(number("--latency", &v, 0..=5000)?)
                };
            }
            "--latency-ms" => {
                o.fixed_latency_ms = Some(number("--latency-ms", &value()?, 0..=5000)?)
            }
            "--min-latency-ms" => {
                o.min_latency_ms = number("--min-latency-ms", &value()?, 0..=5000)?
            }
            "--max-latency-ms" => {
                o.max_latency_ms = number("--max-latency-ms", &value()?, 1..=5000)?
            }
            "--clock-follow" => {
                o.playout.clock_follow = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => {
                        return Err(usage::Error::value(
                            "--clock-follow",
                            format!("'{v}' is neither on nor off"),
                        ))
                    }
                }
            }
            "--stream-lost-ms" => {
                o.playout.stream_lost_ms = number("--stream-lost-ms", &value()?, 20..=60_000)?
            }
            "--device" => o.playout.device = value()?,
            "--access" => {
                o.playout.access = match value()?.as_str() {
                    "rw" => Access::ReadWrite,
                    "mmap" => Access::Mmap,
                    v => {
                        return Err(usage::Error::value(
                            "--access",
                            format!("'{v}' is neither rw nor mmap"),
                        ))
                    }
                }
            }
            "--period-ms" => o.playout.period_ms = number("--period-ms", &value()?, 1..=100)?,
            "--buffer-periods" => {
                o.playout.buffer_periods = number("--buffer-periods", &value()?, 2..=64)?
            }
            "--device-rate" => {
                o.device_rate = Some(number("--device-rate", &value()?, 8000..=192_000)?)
            }
            "--device-channels" => {
                o.device_channels = Some(number("--device-channels", &value()?, 1..=8)?)
            }
            "--rt-priority" => o.playout.rt_priority = number("--rt-priority", &value()?, 0..=99)?,
            "--no-mlock" => o.playout.lock_memory = false,
            "--stats-interval" => {
                o.stats_interval =
                    Duration::from_secs(number("--stats-interval", &value()?, 0..=86_400)?)
            }
            _ => return Err(usage::Error::rule(format!("unknown option '{name}'"))),
        }
    }
    if o.min_latency_ms > o.max_latency_ms {
        return Err(usage::Error::rule(format!(
            "--min-latency-ms {} is above --max-latency-ms {}",
            o.min_latency_ms, o.max_latency_ms
        )));
    }
    if o.srtp_suite.is_some()
        && o.srtp_key_file.is_none()
        && o.streams.iter().all(|s| s.srtp_key_file.is_none())
    {
        return Err(usage::Error::rule(
            "--srtp-suite needs --srtp-key-file: without a key nothing is authenticated",
        ));
    }
    if o.raw.is_some() && o.srtp_key_file.is_some() {
        return Err(usage::Error::rule(
            "--srtp-key-file protects RTP; headerless --raw PCM cannot carry SRTP: drop one",
        ));
    }
    check_streams(&o)?;
    if o.sap.is_some() {
        let taken_from_sap = [
            (o.raw.is_some(), "--raw"),
            (o.net.group.is_some(), "--group"),
            (o.listen_given, "--listen"),
            (o.srtp_key_file.is_some(), "--srtp-key-file"),
            (!o.streams.is_empty(), "--stream"),
        ];
        if let Some((_, option)) = taken_from_sap.iter().find(|(given, _)| *given) {
            return Err(usage::Error::rule(format!(
                "--sap takes the group, port and format from the announcement: drop {option}"
            )));
        }
    }
    if o.raw.is_some() && !o.listen_given {
        o.net.listen.set_port(5005);
    }
    // Headerless PCM has no RTCP; the tutorial's port + 1 stays free.
    o.net.rtcp_next_port = o.raw.is_none() && !o.no_rtcp;
    o.playout.latency = match o.fixed_latency_ms {
        Some(ms) => Latency::Fixed { ms },
        None => Latency::Auto {
            min_ms: o.min_latency_ms,
            max_ms: o.max_latency_ms,
        },
    };
    if o.sync_trust_clock && o.sync_ms.is_none() {
        return Err(usage::Error::rule(
            "--sync-trust-clock is part of sync mode: give --sync-ms too",
        ));
    }
    if o.sync_ms.is_some() && o.raw.is_some() {
        return Err(usage::Error::rule(
            "--sync-ms needs RTP with RTCP sender reports; headerless --raw PCM carries no timing: drop one",
        ));
    }
    if o.sync_ms.is_some() && !o.playout.clock_follow {
        // Sync holds each frame within 0.1 ms of its time by steering the
        // resampler; unsteered, the device's clock against the sender's
        // (tens of ppm) moves a speaker out of step by ms within minutes.
        return Err(usage::Error::rule(
            "--sync-ms steers playout to the sender's clock; --clock-follow off forbids that: drop one",
        ));
    }
    o.playout.sync = o.sync_ms.map(|sync_ms| SyncConfig {
        sync_ms,
        trust_clock: o.sync_trust_clock,
    });
    o.playout.device_rate = o.device_rate;
    o.playout.device_channels = o.device_channels;
    size_for_formats(&mut o);
    Ok(Some(o))
}

/// `--duck-db DB|off`.
fn parse_duck(v: &str) -> Result<Duck, usage::Error> {
    if v == "off" {
        return Ok(Duck::Mute);
    }
    match v.parse::<f32>() {
        Ok(db) if (-120.0..=0.0).contains(&db) => Ok(Duck::Db(db)),
        _ => Err(usage::Error::value(
            "--duck-db",
            format!("'{v}' is neither a level from -120 to 0 dB nor off (to mute)"),
        )),
    }
}

/// `--stream` against the one-stream options it replaces, and the streams
/// against each other.
fn check_streams(o: &Options) -> Result<(), usage::Error> {
    if o.streams.is_empty() {
        return Ok(());
    }
    let replaced = [
        (
            o.listen_given,
            "--listen",
            "give its address as one more --stream",
        ),
        (
            o.net.group.is_some(),
            "--group",
            "give group= in the --stream that joins it",
        ),
        (
            o.raw.is_some(),
            "--raw",
            "several streams are RTP; headerless PCM plays alone with --listen",
        ),
    ];
    if let Some((_, option, what)) = replaced.iter().find(|(given, _, _)| *given) {
        return Err(usage::Error::rule(format!(
            "{option} does not go with --stream: {what}"
        )));
    }
    if o.streams.len() > MAX_STREAMS {
        return Err(usage::Error::rule(format!(
            "--stream given {} times; at most {MAX_STREAMS} streams are played",
            o.streams.len()
        )));
    }
    for (i, a) in o.streams.iter().enumerate() {
        if let Some(b) = o.streams.iter().skip(i + 1).find(|b| {
            b.listen.port() == a.listen.port()
                && (b.listen.ip() == a.listen.ip()
                    || b.listen.ip().is_unspecified()
                    || a.listen.ip().is_unspecified())
                && b.group == a.group
        }) {
            return Err(usage::Error::rule(format!(
                "--stream {} and --stream {} would receive the same datagrams: give each stream its own port or group",
                a.name, b.name
            )));
        }
        if o.streams.iter().skip(i + 1).any(|b| b.name == a.name) {
            return Err(usage::Error::rule(format!(
                "two --stream are named '{}': give each its own name=",
                a.name
            )));
        }
    }
    Ok(())
}

/// The playout side is sized for every format the stream may carry
/// (resamplers are built off the realtime thread for each): called again
/// once a SAP announcement has set the payload map.
fn size_for_formats(o: &mut Options) {
    let (max_rate, max_channels) = match o.raw {
        Some(f) => (f.rate, f.channels),
        None => o.payload_map.max_rate_channels(),
    };
    o.playout.max_rate = max_rate;
    o.playout.opus = o.raw.is_none() && o.payload_map.has_opus();
    o.playout.max_channels = max_channels;
    o.playout.stream_formats = match o.raw {
        Some(f) => vec![(f.rate, f.channels)],
        None => o.payload_map.rates_channels(),
    };
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => return e.exit("netspeaker"),
    };
    let level = logging::level_from_verbosity(options.verbose, options.quiet);
    if let Err(e) = logging::init("netspeaker", LogTarget::choose(options.syslog), level) {
        eprintln!("netspeaker: {e}");
        return ExitCode::FAILURE;
    }
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            log::error!("{msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut options: Options) -> Result<(), String> {
    let signals = Signals::install(Handled {
        reopen: true,
        statistics: true,
    })
    .map_err(|e| e.to_string())?;
    // --sap: the session is resolved before any other thread starts, so
    // the playout side is built for its formats from the beginning.
    let mut sap_watch = None;
    if let Some(pattern) = options.sap.clone() {
        let Some((listener, follower)) = sap::resolve(pattern, &options.net, &signals)? else {
            return Ok(());
        };
        if let Some(session) = follower.chosen() {
            let (listen, group) = netspeaker::receive::sap::listen_for(session);
            options.net.listen = listen;
            options.net.group = group;
            for &(pt, f) in &session.formats {
                options.payload_map.set(pt, f);
            }
            size_for_formats(&mut options);
        }
        sap_watch = Some((listener, follower));
    }
    // The keys first: a key file that cannot be used stops the start, it
    // never falls back to accepting plaintext.
    let suite = options.srtp_suite.unwrap_or_default();
    let streams = wire_streams(&options)?;
    let several = streams.len() > 1 || !options.streams.is_empty();
    let mut srtp_keys = Vec::with_capacity(streams.len());
    for w in &streams {
        srtp_keys.push(match &w.srtp_key_file {
            Some(path) => Some(SrtpContext::new(
                &MasterKey::read_file(path).map_err(|e| format!("stream {}: {e}", w.name))?,
                suite,
            )),
            None => None,
        });
    }
    let mut receivers = Vec::with_capacity(streams.len());
    for w in &streams {
        let receiver = Receiver::bind(&w.net).map_err(|e| {
            if several {
                format!("stream {}: {e}", w.name)
            } else {
                e.to_string()
            }
        })?;
        if receiver.waiting_for_interface() {
            log::info!(
                "waiting for interface {}",
                w.net.interface.as_deref().unwrap_or_default()
            );
        }
        if let Some(addr) = receiver.rtcp_addr() {
            log::info!("RTCP: sender reports read on {addr} and on the RTP port");
        }
        receivers.push(receiver);
    }
    for (w, key) in streams.iter().zip(&srtp_keys) {
        let what = match options.raw {
            Some(f) => format!(
                "headerless {} {} Hz {} ch",
                f.encoding.raw_name(),
                f.rate,
                f.channels
            ),
            None if key.is_some() => format!("SRTP ({suite}) only"),
            None => "RTP".to_string(),
        };
        if several {
            log::info!(
                "listening on {} for {what}: stream {}, priority {}",
                w.net.listen,
                w.name,
                w.priority
            );
        } else {
            log::info!("listening on {} for {what}", w.net.listen);
        }
    }

    let net_events: &'static mut netspeaker::net::EventQueue =
        Box::leak(Box::new(netspeaker::net::EventQueue::new()));
    let (mut net_event_tx, mut net_event_rx) = net_events.split();
    let mut net_event_log = netspeaker::net::EventLog::default();

    let playout_stats = Arc::new(PlayoutStats::default());
    let net_stop = Arc::new(AtomicBool::new(false));
    // Set by the SAP thread when the session moved: the SDP to restart on.
    let moved: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    // Set by the SAP thread while the session is deleted (or timed out):
    // the silence that follows is the stream's end, not a loss.
    let sap_ended = Arc::new(AtomicBool::new(false));
    let sap_thread = match sap_watch {
        Some((listener, follower)) => Some(sap::watch(
            listener,
            follower,
            sap::Shared {
                moved: Arc::clone(&moved),
                ended: Arc::clone(&sap_ended),
            },
            Arc::clone(&net_stop),
        )?),
        None => None,
    };
    // Set by the supervisor on SIGHUP, taken by the playout thread.
    let reopen = Arc::new(AtomicBool::new(false));
    let heartbeat = Arc::new(Heartbeat::new());

    // Each stream's queue lives as long as the process: leaked once at
    // startup so that its ends can move into threads without locks or
    // allocation.
    let mut net_streams = Vec::with_capacity(streams.len());
    let mut inputs = Vec::with_capacity(streams.len());
    let mut watches = Vec::new();
    let mut net_counters = Vec::with_capacity(streams.len());
    for ((w, mut receiver), srtp) in streams.iter().zip(receivers).zip(srtp_keys) {
        let (packet_tx, packet_rx) = playout::packet_queue();
        watches.extend(receiver.take_link_watch());
        let counters = Arc::new(NetCounters::default());
        net_counters.push(Arc::clone(&counters));
        let sender_clock = Arc::clone(&counters.sender_clock);
        net_streams.push(netspeaker::net::NetStream {
            receiver,
            srtp,
            parser: PacketParser::new(w.mode.clone()),
            queue: packet_tx,
            counters,
            scratch: netspeaker::net::NetScratch::default(),
        });
        inputs.push(StreamInput {
            config: w.playout.clone(),
            priority: w.priority,
            packets: packet_rx,
            sender_clock,
        });
    }
    let names: Vec<String> = streams
        .iter()
        .map(|w| format!("{} (priority {})", w.name, w.priority))
        .collect();
    let net_thread = {
        let stop = Arc::clone(&net_stop);
        std::thread::Builder::new()
            .name("net".into())
            .spawn(move || {
                use netspeaker::service::alloc::{watch_this_thread, Watched};
                watch_this_thread(Watched::Net);
                netspeaker::net::run_streams(&mut net_streams, &mut net_event_tx, &stop)
            })
            .map_err(|e| format!("cannot start the net thread: {e}"))?
    };
    // A link thread per stream on an --interface keeps its group joined
    // as the interface comes and goes; they report to the main thread,
    // which logs.
    let (link_tx, link_rx) = std::sync::mpsc::channel::<LinkEvent>();
    let mut link_threads = Vec::with_capacity(watches.len());
    for watch in watches {
        let stop = Arc::clone(&net_stop);
        let link_tx = link_tx.clone();
        link_threads.push(
            std::thread::Builder::new()
                .name("link".into())
                .spawn(move || watch.run(&link_tx, &stop))
                .map_err(|e| format!("cannot start the link thread: {e}"))?,
        );
    }
    let mut playout = playout::start_streams(
        &options.playout,
        inputs,
        &options.arbiter,
        playout::Shared {
            stats: Arc::clone(&playout_stats),
            stop: signals.stop_flag(),
            reopen: Arc::clone(&reopen),
            heartbeat: Arc::clone(&heartbeat),
        },
    )
    .map_err(|e| e.to_string())?;

    let notifier = Notifier::from_env();
    let mut event_log = if several {
        EventLog::with_streams(names.clone(), options.arbiter.duck.to_string())
    } else {
        EventLog::default()
    };
    // READY once the playout thread reports on its first device open,
    // success or not: a missing card is waited for and must not fail the
    // start.
    let mut ready: Option<&'static str> = None;
    let mut sync_watch = options.playout.sync.map(|_| SyncWatch::default());
    let mut drain_events = || {
        if let Some(w) = sync_watch.as_mut() {
            w.poll(&net_counters, &playout_stats);
        }
        while let Some(event) = playout.events.dequeue() {
            let now = netspeaker::service::clock::monotonic_ns();
            if matches!(event, Event::StreamLost { .. }) && sap_ended.load(Relaxed) {
                log::info!("stream ended: its SAP session was deleted; faded out");
            } else {
                event_log.log(&event, now);
            }
            if ready.is_none() {
                ready = match event {
                    Event::DeviceOpened { .. } => Some("playing"),
                    Event::DeviceOpenFailed(_) => Some("waiting for the sound device"),
                    _ => None,
                };
            }
        }
        while let Ok(event) = link_rx.try_recv() {
            log::log!(event.level(), "{event}");
        }
        // The net thread reports its drops; the lines are written here.
        net_event_log.drain(
            &mut net_event_rx,
            netspeaker::service::clock::monotonic_ns(),
        );
        if moved.try_lock().is_ok_and(|m| m.is_some()) {
            return Poll::Finished;
        }
        match ready {
            Some(status) => Poll::Ready(Some(status)),
            None => Poll::Starting,
        }
    };
    let speaker_names = several.then_some(names.as_slice());
    let mut statistics = || {
        log::info!(
            "{}",
            stats_line(&net_counters, &playout_stats, speaker_names)
        )
    };
    let mut reopen_device = || reopen.store(true, Relaxed);
    service::supervise(
        service::Config {
            signals: &signals,
            notifier: &notifier,
            watchdog: WatchdogGate::from_env(Arc::clone(&heartbeat)),
            watched: "playout",
            poll_every: Duration::from_millis(10),
            statistics_every: Some(options.stats_interval).filter(|d| !d.is_zero()),
        },
        Callbacks {
            poll: &mut drain_events,
            statistics: &mut statistics,
            reopen: &mut reopen_device,
        },
    );
    net_stop.store(true, Relaxed);
    // A move ends the run like a stop (the playout thread closes the
    // device), then the process starts over on the new session.
    let restart_on = moved.lock().ok().and_then(|mut m| m.take());
    if restart_on.is_some() {
        signals.request_stop();
    }
    // The threads see the flags within a period (playout) or a receive
    // timeout (net); a playout thread wedged in a device call must not
    // keep the process from exiting, hence the deadline.
    let deadline = Instant::now() + Duration::from_millis(150);
    let link_finished = || link_threads.iter().all(|t| t.is_finished());
    while Instant::now() < deadline
        && !(net_thread.is_finished() && playout.is_finished() && link_finished())
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    net_event_log.drain(
        &mut net_event_rx,
        netspeaker::service::clock::monotonic_ns(),
    );
    log::info!(
        "stopping: {}",
        stats_line(&net_counters, &playout_stats, speaker_names)
    );
    // Several streams: the line above sums them; each one's own figures.
    if several {
        for ((name, own), net) in names
            .iter()
            .zip(playout_stats.streams.iter())
            .zip(&net_counters)
        {
            log::info!(
                "stopping: stream {name}: {}, {} auth-failed",
                own.read(),
                net.auth_failed.load(Relaxed) + net.replayed.load(Relaxed)
            );
        }
    }
    if let Some(t) = sap_thread {
        // It sees the flag within its receive timeout.
        let _ = t.join();
    }
    match restart_on {
        Some(sdp) => Err(sap::restart(&sdp)),
        None => Ok(()),
    }
}

/// Sync mode seen from the main thread: tells the playout thread whether
/// the kernel calls the wall clock synchronised (a system call, once a
/// second), and logs when sync takes charge or stands down, and why (a
/// new reason at once, the same one at most every 10 s).
#[derive(Default)]
struct SyncWatch {
    clock_checked: Option<Instant>,
    state: u32,
    /// When a standing-down reason was last logged, and which.
    off_logged: Option<(Instant, u32)>,
    /// Alignments, and the audio they skipped and inserted (ms), as of
    /// the last re-alignment logged.
    aligned: (u64, f64, f64),
    realign_logged: Option<Instant>,
}

impl SyncWatch {
    fn poll(&mut self, nets: &[Arc<NetCounters>], playout: &PlayoutStats) {
        use netspeaker::service::clock::{clock_state, ClockState};
        let now = Instant::now();
        if self
            .clock_checked
            .map_or(true, |t| now - t >= Duration::from_secs(1))
        {
            self.clock_checked = Some(now);
            let synced = matches!(clock_state(), ClockState::Synced { .. });
            for n in nets {
                n.sender_clock.wall_clock_synced.store(synced, Relaxed);
            }
        }
        let state = playout.sync_state.load(Relaxed);
        let line = playout.sync_line();
        if let Some(netspeaker::receive::stats::SyncLine::InCharge {
            aligns,
            skipped_ms,
            inserted_ms,
            ..
        }) = line
        {
            // Taking charge aligns (counted here even if the count is
            // read before it shows); any alignment after that means a
            // jump: of the wall clock, of the device's position, or of
            // the sender's mapping at its first fit. A speaker heard out
            // of step is explained by this line; at most one per 10 s,
            // with what the alignments since did.
            let (seen, skipped, inserted) = self.aligned;
            if state != self.state {
                self.aligned = (aligns.max(seen + 1), skipped_ms, inserted_ms);
            } else if aligns > seen
                && self
                    .realign_logged
                    .map_or(true, |t| now - t >= Duration::from_secs(10))
            {
                self.realign_logged = Some(now);
                self.aligned = (aligns, skipped_ms, inserted_ms);
                log::info!(
                    "sync: re-aligned {} time(s): skipped {:.1} ms, inserted {:.1} ms of silence (the wall clock, the device's position or the sender's mapping jumped)",
                    aligns - seen,
                    skipped_ms - skipped,
                    inserted_ms - inserted
                );
            }
        }
        if state == self.state {
            return;
        }
        match line {
            Some(netspeaker::receive::stats::SyncLine::InCharge { error_us, .. }) => {
                self.state = state;
                log::info!("sync: in charge, every frame at its capture time on the sender's clock plus the sync delay (error {error_us:+.0} us)");
            }
            Some(netspeaker::receive::stats::SyncLine::Off(why)) => {
                // A new reason at once; the same one again (sync came
                // and went) at most every 10 s.
                if self
                    .off_logged
                    .is_some_and(|(t, s)| s == state && now - t < Duration::from_secs(10))
                {
                    return;
                }
                self.state = state;
                self.off_logged = Some((now, state));
                use netspeaker::receive::sync::Why;
                let level = match why {
                    Why::ClockUnsynchronised | Why::TooShort => log::Level::Warn,
                    // Between streams: nothing to sync, nothing to say.
                    Why::NoStream => log::Level::Debug,
                    _ => log::Level::Info,
                };
                log::log!(level, "sync: playing adaptively: {why}");
            }
            None => self.state = state,
        }
    }
}

/// `--sap`: waiting for the session at start-up, the thread that follows
/// it afterwards, and the restart on a move.
mod sap {
    use netspeaker::net::sap::Listener;
    use netspeaker::net::socket::Interface;
    use netspeaker::net::NetConfig;
    use netspeaker::receive::sap::{Follower, Notice};
    use netspeaker::service::clock::monotonic_ns;
    use netspeaker::service::notify::{watchdog_interval, Notifier};
    use netspeaker::service::ratelimit::RateLimit;
    use netspeaker::service::signals::Signals;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// The environment variable that hands the moved session's SDP to the
    /// restarted process, so it starts on it without waiting for the next
    /// announcement.
    const RESUME_VAR: &str = "NETSPEAKER_SAP_SESSION";
    const POLL: Duration = Duration::from_millis(200);

    fn describe(pattern: &Option<String>) -> String {
        match pattern {
            Some(p) => format!("session matching '{p}'"),
            None => "session".to_string(),
        }
    }

    /// Opens the SAP sockets and waits for the session (or a stop:
    /// `Ok(None)`).
    pub fn resolve(
        pattern: Option<String>,
        net: &NetConfig,
        signals: &Signals,
    ) -> Result<Option<(Listener, Follower)>, String> {
        let interface = match net.interface.as_deref() {
            Some(i) => Some(Interface::resolve(i).map_err(|e| e.to_string())?),
            None => None,
        };
        let listener = Listener::open(interface.as_ref()).map_err(|e| e.to_string())?;
        let mut follower = Follower::new(pattern.clone());
        let resumed = std::env::var(RESUME_VAR)
            .ok()
            .and_then(|text| netspeaker::rtp::sdp::parse(&text).ok());
        // Not passed on to anything this process starts.
        std::env::remove_var(RESUME_VAR);
        if let Some(session) = resumed {
            log::info!("sap: restarted on session {session}");
            follower.resume(session, monotonic_ns());
            return Ok(Some((listener, follower)));
        }
        let groups: Vec<String> = listener.groups.iter().map(|g| g.to_string()).collect();
        log::info!(
            "sap: waiting for the announcement of a {} on {} port {}",
            describe(&pattern),
            groups.join(", "),
            netspeaker::net::sap::SAP_PORT
        );
        // Waiting for a sender is a normal state, however long: under
        // systemd it is ready (with that status) and alive (watchdog), so
        // neither TimeoutStartSec nor WatchdogSec restarts it meanwhile.
        let notifier = Notifier::from_env();
        let status = format!(
            "waiting for the SAP announcement of a {}",
            describe(&pattern)
        );
        if let Err(e) = notifier.ready_with_status(&status) {
            log::warn!("{e}");
        }
        let watchdog = watchdog_interval().map(|d| d / 4);
        let mut petted = Instant::now();
        let mut buf = vec![0u8; 65_536];
        let mut limit = RateLimit::default_for_input();
        while !signals.stop_requested() {
            if watchdog.is_some_and(|every| petted.elapsed() >= every) {
                petted = Instant::now();
                // A failure here is reported by the supervisor later.
                let _ = notifier.watchdog();
            }
            let notices = match listener.recv(&mut buf, POLL) {
                Ok(Some((n, from))) => {
                    follower.hear(buf.get(..n).unwrap_or_default(), from, monotonic_ns())
                }
                Ok(None) => follower.tick(monotonic_ns()),
                Err(e) => return Err(format!("sap: receiving announcements failed: {e}")),
            };
            for notice in &notices {
                log_notice(notice, &follower, &mut limit, &pattern);
            }
            if follower.chosen().is_some() {
                return Ok(Some((listener, follower)));
            }
        }
        Ok(None)
    }

    /// What the SAP thread tells the main thread.
    pub struct Shared {
        /// The SDP of the session it moved to: restart on it.
        pub moved: Arc<Mutex<Option<String>>>,
        /// The session is deleted or timed out (until it returns).
        pub ended: Arc<AtomicBool>,
    }

    /// Follows the session on a thread of its own ("sap"); on a move it
    /// leaves the new SDP for the main thread.
    pub fn watch(
        listener: Listener,
        mut follower: Follower,
        shared: Shared,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, String> {
        let Shared { moved, ended } = shared;
        std::thread::Builder::new()
            .name("sap".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65_536];
                let mut limit = RateLimit::default_for_input();
                while !stop.load(Relaxed) {
                    let (notices, datagram_len) = match listener.recv(&mut buf, POLL) {
                        Ok(Some((n, from))) => (
                            follower.hear(buf.get(..n).unwrap_or_default(), from, monotonic_ns()),
                            n,
                        ),
                        Ok(None) => (follower.tick(monotonic_ns()), 0),
                        Err(e) => {
                            if limit.check(monotonic_ns()).is_some() {
                                log::warn!("sap: receiving announcements failed: {e}");
                            }
                            std::thread::sleep(POLL);
                            continue;
                        }
                    };
                    for notice in &notices {
                        log_notice(notice, &follower, &mut limit, &None);
                        match notice {
                            Notice::Deleted(_) | Notice::Expired(_) => ended.store(true, Relaxed),
                            Notice::Returned(_) | Notice::Moved { .. } => {
                                ended.store(false, Relaxed)
                            }
                            _ => {}
                        }
                        if let Notice::Moved { .. } = notice {
                            let sdp = netspeaker::net::sap::parse(
                                buf.get(..datagram_len).unwrap_or_default(),
                            )
                            .map(|p| p.sdp.to_string());
                            if let (Ok(sdp), Ok(mut slot)) = (sdp, moved.lock()) {
                                *slot = Some(sdp);
                            }
                        }
                    }
                }
                let refused = follower.refusals();
                if refused.total() > 0 {
                    log::info!("sap: announcements refused: {refused}");
                }
            })
            .map_err(|e| format!("cannot start the SAP thread: {e}"))
    }

    fn log_notice(
        notice: &Notice,
        follower: &Follower,
        limit: &mut RateLimit,
        pattern: &Option<String>,
    ) {
        match notice {
            Notice::Refused { from, why } => {
                if let Some(suppressed) = limit.check(monotonic_ns()) {
                    log::warn!(
                        "sap: from {from}: {why} (so far: {}{})",
                        follower.refusals(),
                        if suppressed > 0 {
                            format!("; {suppressed} lines suppressed")
                        } else {
                            String::new()
                        }
                    );
                }
            }
            Notice::Several(names) => log::warn!(
                "sap: {} sessions match, waiting until one is left or name one with --sap NAME: '{}'",
                names.len(),
                names.join("', '")
            ),
            Notice::Chosen(s) => log::info!(
                "sap: playing {s} (the {} announced)",
                describe(pattern)
            ),
            Notice::Reannounced(s) => log::info!(
                "sap: session '{}' re-announced as version {}: same stream",
                s.name,
                s.origin.version
            ),
            Notice::Deleted(s) => log::info!(
                "sap: session '{}' deleted by its sender: the stream stops; listening for it to return",
                s.name
            ),
            Notice::Expired(s) => log::warn!(
                "sap: session '{}' not announced for ten intervals: taken as ended; listening for it to return",
                s.name
            ),
            Notice::Returned(s) => log::info!("sap: session {s} announced again: playing"),
            Notice::Moved { from, to } => log::info!(
                "sap: session '{}' moved from {from} to {to}: restarting the receive side",
                to.name
            ),
            Notice::Competing(s) => log::warn!(
                "sap: session '{}' also matches; still playing '{}' (give --sap a name that matches one only)",
                s.name,
                follower.chosen().map_or("", |c| c.name.as_str())
            ),
        }
    }

    /// Starts this program over on the moved session (same pid, so
    /// systemd keeps supervising it); returns only on failure, with the
    /// message, and then the exit status makes systemd restart it.
    pub fn restart(sdp: &str) -> String {
        use std::os::unix::process::CommandExt;
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => return format!("sap: cannot restart on the moved session: {e}"),
        };
        let err = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(RESUME_VAR, sdp)
            .exec();
        format!("sap: cannot restart on the moved session: {err}; exiting for the service manager to restart netspeaker")
    }
}

/// One stream as the receiver runs it: from `--stream`, or the one
/// stream of `--listen`.
struct Wired {
    name: String,
    priority: u8,
    net: NetConfig,
    mode: InputMode,
    srtp_key_file: Option<std::path::PathBuf>,
    /// Its formats on top of the shared playout settings.
    playout: PlayoutConfig,
}

fn wire_streams(o: &Options) -> Result<Vec<Wired>, String> {
    if o.streams.is_empty() {
        return Ok(vec![Wired {
            name: o.net.listen.to_string(),
            priority: 0,
            net: o.net.clone(),
            mode: match o.raw {
                Some(f) => InputMode::Raw(f),
                None => InputMode::Rtp(o.payload_map.clone()),
            },
            srtp_key_file: o.srtp_key_file.clone(),
            playout: o.playout.clone(),
        }]);
    }
    Ok(o.streams
        .iter()
        .map(|spec| {
            let mut map = o.payload_map.clone();
            for &(pt, f) in &spec.formats {
                map.set(pt, f);
            }
            let (max_rate, max_channels) = map.max_rate_channels();
            Wired {
                name: spec.name.clone(),
                priority: spec.priority,
                net: NetConfig {
                    listen: spec.listen,
                    group: spec.group,
                    ..o.net.clone()
                },
                srtp_key_file: spec.srtp_key_file.clone().or(o.srtp_key_file.clone()),
                playout: PlayoutConfig {
                    max_rate,
                    max_channels,
                    opus: map.has_opus(),
                    stream_formats: map.rates_channels(),
                    ..o.playout.clone()
                },
                mode: InputMode::Rtp(map),
            }
        })
        .collect())
}

fn stats_line(
    nets: &[Arc<NetCounters>],
    playout: &PlayoutStats,
    speakers: Option<&[String]>,
) -> StatsLine {
    use netspeaker::service::alloc::{allocations, Watched};
    let sum = |f: fn(&NetCounters) -> u64| nets.iter().map(|n| f(n)).sum::<u64>();
    let mut line = StatsLine {
        realtime_allocs: allocations(Watched::Playout) + allocations(Watched::Net),
        dropped_filtered: sum(|n| n.filtered.load(Relaxed)),
        dropped_malformed: sum(|n| {
            n.malformed.load(Relaxed)
                + n.unknown_payload_type.load(Relaxed)
                + n.too_large.load(Relaxed)
        }),
        dropped_overflow: sum(|n| n.queue_full.load(Relaxed)),
        auth_failed: sum(|n| n.auth_failed.load(Relaxed) + n.replayed.load(Relaxed)),
        speaker: speakers.map(|names| match playout.speaker.load(Relaxed).checked_sub(1) {
            Some(i) => names
                .get(i as usize)
                .cloned()
                .unwrap_or_else(|| format!("stream {i}")),
            None => "none".to_string(),
        }),
        sender_reports: sum(|n| n.sender_reports.load(Relaxed)),
        // A system call, here on the main thread, never the realtime one.
        clock: Some(netspeaker::service::clock::clock_state()),
        ..StatsLine::default()
    };
    playout.read_into(&mut line);
    // Several streams: the first whose sender reports gave a rate.
    let rate_uhz = nets
        .iter()
        .map(|n| n.sender_rate_uhz.load(Relaxed))
        .find(|&r| r > 0)
        .unwrap_or(0);
    let nominal = playout.stream_rate.load(Relaxed);
    if rate_uhz > 0 && nominal > 0 {
        line.sender_ppm = Some((rate_uhz as f64 / 1e6 / f64::from(nominal) - 1.0) * 1e6);
    }
    line
}
