//! netspeaker: plays a live audio stream arriving over UDP (RTP L16/PCMU/
//! PCMA or headerless PCM) through ALSA. This file only parses options
//! and wires the stages together: net thread → SPSC queue → playout
//! thread (jitter buffer … ALSA); the main thread runs
//! `service::supervise` (signals, systemd notify/watchdog, the statistics
//! line, draining the playout thread's events).

use netspeaker::alsa::playback::Access;
use netspeaker::audio::format::{parse_raw, parse_rtp_format, PayloadMap, StreamFormat};
use netspeaker::net::{Cidr, NetConfig, NetCounters, Receiver};
use netspeaker::receive::engine::{Latency, PlayoutConfig};
use netspeaker::receive::events::EventLog;
use netspeaker::receive::playout::{self, Event, PacketQueue};
use netspeaker::receive::stats::{PlayoutStats, StatsLine};
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
  --listen ADDR:PORT        address to receive on, IPv4 or IPv6
                            [default: 0.0.0.0:5004; 0.0.0.0:5005 with --raw]
  --group ADDR              join this multicast group
  --interface NAME|ADDR     interface for the multicast group [default: any]
  --allow CIDR              accept packets only from these sources (repeatable)
                            [default: any source]
  --recv-buffer BYTES       socket receive buffer for bursts [default: 1048576]
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
ALSA:
  --device NAME             ALSA playback device [default: default]
  --access rw|mmap          read/write or mmap transfers [default: rw]
  --period-ms MS            ALSA period [default: 5]
  --buffer-periods N        ALSA buffer size in periods [default: 4]
  --device-rate HZ          fix the device rate (convert streams to it)
                            [default: the stream's rate]
  --device-channels N       fix the device channel count [default: the stream's]
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
    net: NetConfig,
    listen_given: bool,
    payload_map: PayloadMap,
    raw: Option<StreamFormat>,
    srtp_key_file: Option<std::path::PathBuf>,
    srtp_suite: Option<Suite>,
    playout: PlayoutConfig,
    device_rate: Option<u32>,
    device_channels: Option<u16>,
    min_latency_ms: u32,
    max_latency_ms: u32,
    fixed_latency_ms: Option<u32>,
    stats_interval: Duration,
    syslog: bool,
    verbose: u8,
    quiet: u8,
}

fn parse_args() -> Result<Option<Options>, usage::Error> {
    use lexopt::prelude::*;
    let mut o = Options {
        net: NetConfig::default(),
        listen_given: false,
        payload_map: PayloadMap::default(),
        raw: None,
        srtp_key_file: None,
        srtp_suite: None,
        playout: PlayoutConfig::default(),
        device_rate: None,
        device_channels: None,
        min_latency_ms: 5,
        max_latency_ms: 300,
        fixed_latency_ms: None,
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
    if o.srtp_suite.is_some() && o.srtp_key_file.is_none() {
        return Err(usage::Error::rule(
            "--srtp-suite needs --srtp-key-file: without a key nothing is authenticated",
        ));
    }
    if o.raw.is_some() && o.srtp_key_file.is_some() {
        return Err(usage::Error::rule(
            "--srtp-key-file protects RTP; headerless --raw PCM cannot carry SRTP: drop one",
        ));
    }
    if o.raw.is_some() && !o.listen_given {
        o.net.listen.set_port(5005);
    }
    o.playout.latency = match o.fixed_latency_ms {
        Some(ms) => Latency::Fixed { ms },
        None => Latency::Auto {
            min_ms: o.min_latency_ms,
            max_ms: o.max_latency_ms,
        },
    };
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
    o.playout.device_rate = o.device_rate;
    o.playout.device_channels = o.device_channels;
    Ok(Some(o))
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

fn run(options: Options) -> Result<(), String> {
    let signals = Signals::install(Handled {
        reopen: true,
        statistics: true,
    })
    .map_err(|e| e.to_string())?;
    // The key first: a key file that cannot be used stops the start, it
    // never falls back to accepting plaintext.
    let suite = options.srtp_suite.unwrap_or_default();
    let srtp = match &options.srtp_key_file {
        Some(path) => Some(SrtpContext::new(
            &MasterKey::read_file(path).map_err(|e| e.to_string())?,
            suite,
        )),
        None => None,
    };
    let receiver = Receiver::bind(&options.net).map_err(|e| e.to_string())?;
    let mode = match options.raw {
        Some(f) => InputMode::Raw(f),
        None => InputMode::Rtp(options.payload_map.clone()),
    };
    log::info!(
        "listening on {} for {}",
        options.net.listen,
        match options.raw {
            Some(f) => format!(
                "headerless {} {} Hz {} ch",
                f.encoding.raw_name(),
                f.rate,
                f.channels
            ),
            None if srtp.is_some() => format!("SRTP ({suite}) only"),
            None => "RTP".to_string(),
        }
    );

    // The queues live as long as the process: leaked once at startup so
    // their ends can move into threads without locks or allocation.
    let packets: &'static mut PacketQueue = Box::leak(Box::new(PacketQueue::new()));
    let (mut packet_tx, packet_rx) = packets.split();
    let net_events: &'static mut netspeaker::net::EventQueue =
        Box::leak(Box::new(netspeaker::net::EventQueue::new()));
    let (mut net_event_tx, mut net_event_rx) = net_events.split();
    let mut net_event_log = netspeaker::net::EventLog::default();

    let net_counters = Arc::new(NetCounters::default());
    let playout_stats = Arc::new(PlayoutStats::default());
    let net_stop = Arc::new(AtomicBool::new(false));
    // Set by the supervisor on SIGHUP, taken by the playout thread.
    let reopen = Arc::new(AtomicBool::new(false));
    let heartbeat = Arc::new(Heartbeat::new());

    let net_thread = {
        let counters = Arc::clone(&net_counters);
        let stop = Arc::clone(&net_stop);
        let mut parser = PacketParser::new(mode);
        let mut srtp = srtp;
        std::thread::Builder::new()
            .name("net".into())
            .spawn(move || {
                use netspeaker::service::alloc::{watch_this_thread, Watched};
                watch_this_thread(Watched::Net);
                netspeaker::net::run_with_srtp(
                    &receiver,
                    srtp.as_mut(),
                    &mut parser,
                    &mut packet_tx,
                    &mut net_event_tx,
                    &counters,
                    &stop,
                )
            })
            .map_err(|e| format!("cannot start the net thread: {e}"))?
    };
    let mut playout = playout::start(
        &options.playout,
        packet_rx,
        Arc::clone(&playout_stats),
        signals.stop_flag(),
        Arc::clone(&reopen),
        Arc::clone(&heartbeat),
    )
    .map_err(|e| e.to_string())?;

    let notifier = Notifier::from_env();
    let mut event_log = EventLog::default();
    // READY once the playout thread reports on its first device open,
    // success or not: a missing card is waited for and must not fail the
    // start.
    let mut ready: Option<&'static str> = None;
    let mut drain_events = || {
        while let Some(event) = playout.events.dequeue() {
            let now = netspeaker::service::clock::monotonic_ns();
            event_log.log(&event, now);
            if ready.is_none() {
                ready = match event {
                    Event::DeviceOpened { .. } => Some("playing"),
                    Event::DeviceOpenFailed(_) => Some("waiting for the sound device"),
                    _ => None,
                };
            }
        }
        // The net thread reports its drops; the lines are written here.
        net_event_log.drain(
            &mut net_event_rx,
            netspeaker::service::clock::monotonic_ns(),
        );
        match ready {
            Some(status) => Poll::Ready(Some(status)),
            None => Poll::Starting,
        }
    };
    let mut statistics = || log::info!("{}", stats_line(&net_counters, &playout_stats));
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
    // The threads see the flags within a period (playout) or a receive
    // timeout (net); a playout thread wedged in a device call must not
    // keep the process from exiting, hence the deadline.
    let deadline = Instant::now() + Duration::from_millis(150);
    while Instant::now() < deadline && !(net_thread.is_finished() && playout.is_finished()) {
        std::thread::sleep(Duration::from_millis(2));
    }
    net_event_log.drain(
        &mut net_event_rx,
        netspeaker::service::clock::monotonic_ns(),
    );
    log::info!("stopping: {}", stats_line(&net_counters, &playout_stats));
    Ok(())
}

fn stats_line(net: &NetCounters, playout: &PlayoutStats) -> StatsLine {
    use netspeaker::service::alloc::{allocations, Watched};
    let mut line = StatsLine {
        realtime_allocs: allocations(Watched::Playout) + allocations(Watched::Net),
        dropped_filtered: net.filtered.load(Relaxed),
        dropped_malformed: net.malformed.load(Relaxed)
            + net.unknown_payload_type.load(Relaxed)
            + net.too_large.load(Relaxed),
        dropped_overflow: net.queue_full.load(Relaxed),
        auth_failed: net.auth_failed.load(Relaxed) + net.replayed.load(Relaxed),
        ..StatsLine::default()
    };
    playout.read_into(&mut line);
    line
}
