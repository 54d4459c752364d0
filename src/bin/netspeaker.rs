//! netspeaker: plays a live audio stream arriving over UDP (RTP L16/PCMU/
//! PCMA or headerless PCM) through ALSA. This file only parses options
//! and wires the stages together: net thread → SPSC queue → playout
//! thread (jitter buffer … ALSA), main thread for signals, systemd
//! notify/watchdog and the statistics line.

use netspeaker::alsa::playback::Access;
use netspeaker::audio::format::{parse_raw, parse_rtp_format, PayloadMap, StreamFormat};
use netspeaker::net::{Cidr, NetConfig, NetCounters, Receiver};
use netspeaker::receive::playout::{
    DeviceFormat, Engine, Event, EventQueue, Latency, PacketQueue, PlayoutConfig, PlayoutThread,
};
use netspeaker::receive::stats::{PlayoutStats, StatsLine};
use netspeaker::rtp::{InputMode, PacketParser};
use netspeaker::service::notify::{Heartbeat, Notifier, WatchdogCheck, WatchdogGate};
use netspeaker::service::ratelimit::RateLimit;
use netspeaker::service::{self, LogTarget, SignalFlags};
use std::net::SocketAddr;
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
                            96=L16/48000/2 (repeatable; ENC: L16, PCMU, PCMA)
                            [static: 0 PCMU/8000, 8 PCMA/8000, 10 L16/44100/2,
                            11 L16/44100/1]
  --raw FORMAT:RATE:CH      headerless PCM instead of RTP, e.g. s16le:8000:1
                            (FORMAT: s16le, s16be, ulaw, alaw)
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

/// A bad command line: one line for the user, exit status 2.
struct UsageError(String);

fn number<T>(option: &str, value: &str, range: std::ops::RangeInclusive<T>) -> Result<T, UsageError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match value.parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(UsageError(format!(
            "{option}: '{value}' is not a number from {} to {}",
            range.start(),
            range.end()
        ))),
    }
}

fn parse_args() -> Result<Option<Options>, UsageError> {
    use lexopt::prelude::*;
    let mut o = Options {
        net: NetConfig::default(),
        listen_given: false,
        payload_map: PayloadMap::default(),
        raw: None,
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
    let bad = |e: lexopt::Error| UsageError(e.to_string());
    while let Some(arg) = parser.next().map_err(bad)? {
        let name = match &arg {
            Long(l) => format!("--{l}"),
            Short(s) => format!("-{s}"),
            Value(v) => {
                return Err(UsageError(format!(
                    "unexpected argument '{}': see --help",
                    v.to_string_lossy()
                )))
            }
        };
        let mut value = || -> Result<String, UsageError> {
            parser
                .value()
                .map_err(bad)?
                .into_string()
                .map_err(|_| UsageError(format!("{name}: value is not valid UTF-8")))
        };
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
                    UsageError(format!(
                        "--listen: '{v}' is not ADDR:PORT (e.g. 0.0.0.0:5004 or [::]:5004)"
                    ))
                })?;
                o.listen_given = true;
            }
            "--group" => {
                let v = value()?;
                let addr = v
                    .parse::<std::net::IpAddr>()
                    .map_err(|_| UsageError(format!("--group: '{v}' is not an IP address")))?;
                if !addr.is_multicast() {
                    return Err(UsageError(format!(
                        "--group: {addr} is not a multicast address (224.0.0.0/4 or ff00::/8)"
                    )));
                }
                o.net.group = Some(addr);
            }
            "--interface" => o.net.interface = Some(value()?),
            "--allow" => {
                let v = value()?;
                let cidr = v
                    .parse::<Cidr>()
                    .map_err(|e| UsageError(format!("--allow: {e}")))?;
                o.net.allow.push(cidr);
            }
            "--recv-buffer" => {
                o.net.recv_buffer_bytes = number("--recv-buffer", &value()?, 4096..=64 << 20)?
            }
            "--rtp-format" => {
                let (pt, f) = parse_rtp_format(&value()?)
                    .map_err(|e| UsageError(format!("--rtp-format: {e}")))?;
                o.payload_map.set(pt, f);
            }
            "--raw" => {
                o.raw = Some(parse_raw(&value()?).map_err(|e| UsageError(format!("--raw: {e}")))?)
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
                        return Err(UsageError(format!(
                            "--clock-follow: '{v}' is neither on nor off"
                        )))
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
                        return Err(UsageError(format!(
                            "--access: '{v}' is neither rw nor mmap"
                        )))
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
            _ => return Err(UsageError(format!("unknown option '{name}': see --help"))),
        }
    }
    if o.min_latency_ms > o.max_latency_ms {
        return Err(UsageError(format!(
            "--min-latency-ms {} is above --max-latency-ms {}",
            o.min_latency_ms, o.max_latency_ms
        )));
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
    o.playout.max_channels = max_channels;
    let (initial_rate, initial_channels) = match (o.raw, o.payload_map.get(96)) {
        (Some(f), _) | (None, Some(f)) => (f.rate, f.channels),
        (None, None) => (48_000, 2),
    };
    o.playout.device_format = match (o.device_rate, o.device_channels) {
        (None, None) => DeviceFormat::FollowStream {
            initial_rate,
            initial_channels,
        },
        (rate, channels) => DeviceFormat::Fixed {
            rate: rate.unwrap_or(initial_rate),
            channels: channels.unwrap_or(initial_channels),
        },
    };
    Ok(Some(o))
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(UsageError(msg)) => {
            eprintln!("netspeaker: {msg}");
            return ExitCode::from(2);
        }
    };
    let level = service::level_from_verbosity(options.verbose, options.quiet);
    if let Err(e) = service::init_logging("netspeaker", LogTarget::choose(options.syslog), level) {
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
    let signals = SignalFlags::install().map_err(|e| e.to_string())?;
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
            None => "RTP".to_string(),
        }
    );
    let engine = Engine::new(&options.playout).map_err(|e| e.to_string())?;

    // The queues live as long as the process: leaked once at startup so
    // their ends can move into threads without locks or allocation.
    let packets: &'static mut PacketQueue = Box::leak(Box::new(PacketQueue::new()));
    let (mut packet_tx, packet_rx) = packets.split();
    let events: &'static mut EventQueue = Box::leak(Box::new(EventQueue::new()));
    let (event_tx, mut event_rx) = events.split();
    let net_events: &'static mut netspeaker::net::EventQueue =
        Box::leak(Box::new(netspeaker::net::EventQueue::new()));
    let (mut net_event_tx, mut net_event_rx) = net_events.split();
    let mut net_event_log = netspeaker::net::EventLog::default();

    let net_counters = Arc::new(NetCounters::default());
    let playout_stats = Arc::new(PlayoutStats::default());
    let net_stop = Arc::new(AtomicBool::new(false));
    let heartbeat = Arc::new(Heartbeat::new());

    let net_thread = {
        let counters = Arc::clone(&net_counters);
        let stop = Arc::clone(&net_stop);
        let mut parser = PacketParser::new(mode);
        std::thread::Builder::new()
            .name("net".into())
            .spawn(move || {
                netspeaker::net::run(
                    &receiver,
                    &mut parser,
                    &mut packet_tx,
                    &mut net_event_tx,
                    &counters,
                    &stop,
                )
            })
            .map_err(|e| format!("cannot start the net thread: {e}"))?
    };
    let playout_stop = Arc::clone(&signals.stop);
    let playout = PlayoutThread {
        config: options.playout.clone(),
        engine,
        packets: packet_rx,
        events: event_tx,
        stats: Arc::clone(&playout_stats),
        stop: Arc::clone(&playout_stop),
        reopen: Arc::clone(&signals.reopen),
        heartbeat: Arc::clone(&heartbeat),
    };
    let playout_thread = std::thread::Builder::new()
        .name("playout".into())
        .spawn(move || playout.run())
        .map_err(|e| format!("cannot start the playout thread: {e}"))?;

    let notifier = Notifier::from_env();
    let mut watchdog = WatchdogGate::from_env(Arc::clone(&heartbeat));
    let mut stall_log = RateLimit::new(10_000_000_000, 1);
    let mut ready_sent = false;
    let mut last_stats = Instant::now();
    let mut underrun_log = RateLimit::new(10_000_000_000, 3);
    let mut device_log = RateLimit::new(30_000_000_000, 3);
    while !signals.stop.load(Relaxed) {
        while let Some(event) = event_rx.dequeue() {
            let now = netspeaker::service::clock::monotonic_ns();
            let first_open = matches!(event, Event::DeviceOpened(_) | Event::DeviceOpenFailed(_));
            log_event(&event, now, &mut underrun_log, &mut device_log);
            if first_open && !ready_sent {
                let status = match event {
                    Event::DeviceOpened(_) => "playing",
                    _ => "waiting for the sound device",
                };
                if let Err(e) = notifier.ready_with_status(status) {
                    log::warn!("systemd notify: {e}");
                }
                ready_sent = true;
            }
        }
        // The net thread reports its drops; the lines are written here.
        net_event_log.drain(
            &mut net_event_rx,
            netspeaker::service::clock::monotonic_ns(),
        );
        if SignalFlags::take(&signals.stats)
            || (!options.stats_interval.is_zero() && last_stats.elapsed() >= options.stats_interval)
        {
            log::info!("{}", stats_line(&net_counters, &playout_stats));
            last_stats = Instant::now();
        }
        if let Some(gate) = watchdog.as_mut() {
            let now = netspeaker::service::clock::monotonic_ns();
            match gate.tick(&notifier, now) {
                Ok(WatchdogCheck::Stalled { stalled_for }) => {
                    if stall_log.check(now).is_some() {
                        log::error!(
                            "playout thread stalled for {} ms: not petting the watchdog, systemd will restart us",
                            stalled_for.as_millis()
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => log::warn!("systemd watchdog: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = notifier.stopping();
    net_stop.store(true, Relaxed);
    // The threads see the flags within a period (playout) or a receive
    // timeout (net); a playout thread wedged in a device call must not
    // keep the process from exiting, hence the deadline.
    let deadline = Instant::now() + Duration::from_millis(150);
    while Instant::now() < deadline && !(net_thread.is_finished() && playout_thread.is_finished()) {
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
    let mut line = StatsLine {
        dropped_filtered: net.filtered.load(Relaxed),
        dropped_malformed: net.malformed.load(Relaxed)
            + net.unknown_payload_type.load(Relaxed)
            + net.too_large.load(Relaxed),
        dropped_overflow: net.queue_full.load(Relaxed),
        ..StatsLine::default()
    };
    playout.read_into(&mut line);
    line
}

fn log_event(event: &Event, now: u64, underruns: &mut RateLimit, device: &mut RateLimit) {
    match event {
        Event::RealtimeRefused(e) | Event::MemoryLockRefused(e) => log::warn!("{e}"),
        Event::DeviceOpened(n) => log::info!(
            "device '{}' open: {:?} {:?} {} Hz {} ch, period {} frames, buffer {} frames",
            n.device,
            n.access,
            n.format,
            n.rate,
            n.channels,
            n.period_frames,
            n.buffer_frames
        ),
        Event::DeviceOpenFailed(e) => {
            if let Some(suppressed) = device.check(now) {
                log::error!("{e}; retrying{}", suppressed_note(suppressed));
            }
        }
        Event::DeviceLost(e) => log::warn!("{e}; reopening"),
        Event::Reopening(why) => log::info!("reopening the device: {why}"),
        Event::Underrun => {
            if let Some(suppressed) = underruns.check(now) {
                log::warn!(
                    "underrun: the device ran dry and was restarted{}",
                    suppressed_note(suppressed)
                );
            }
        }
        Event::Resumed => log::warn!("device resumed after suspend"),
        Event::StreamStarted { ssrc, format } => {
            log::info!("stream started: SSRC {ssrc:08x}, {format}")
        }
        Event::NewStream {
            previous_ssrc,
            ssrc,
            format,
        } => {
            log::info!("new sender: SSRC {previous_ssrc:08x} → {ssrc:08x}, {format}; buffer reset")
        }
        Event::StreamLost => {
            log::warn!("stream lost: no packets; faded out, waiting for the sender")
        }
        Event::Resync => log::info!("timestamp jump: jitter buffer resynchronised"),
    }
}

fn suppressed_note(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} similar lines suppressed)")
    }
}
