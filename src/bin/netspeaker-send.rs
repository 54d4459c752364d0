//! netspeaker-send: streams a WAV/raw file, standard input or an ALSA
//! capture device to a netspeaker (or any RTP receiver). Parses options and
//! wires the stages of `netspeaker::send`; nothing else lives here.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use netspeaker::audio::format::{self, Encoding, MAX_CHANNELS, MAX_RATE, MIN_RATE};
use netspeaker::net::send::{parse_dest, DestConfig};
use netspeaker::send::source::Input;
use netspeaker::send::{self, Output, SendConfig, Sender, SourceConfig, Summary};
use netspeaker::service::clock::monotonic_ns;
use netspeaker::service::notify::{self, Heartbeat, Notifier, WatchdogCheck, WatchdogGate};
use netspeaker::service::ratelimit::RateLimit;
use netspeaker::service::sched;
use netspeaker::service::{self, LogTarget};

const RTP_PORT: u16 = 5004;
const RAW_PORT: u16 = 5005;

const HELP: &str = "\
netspeaker-send: stream audio to a netspeaker over UDP (RTP or headerless PCM)

Usage: netspeaker-send [OPTIONS] INPUT [HOST:PORT]
       netspeaker-send [OPTIONS] --capture DEVICE [HOST:PORT]

INPUT is a WAV file (16-bit PCM), a raw PCM file with --format, or - for
standard input (WAV, or raw with --format). It is sent in real time.

Source:
      --format FMT:RATE:CH  the input is raw PCM, e.g. s16le:8000:1
                            (FMT: s16le, s16be, ulaw, alaw) [default: WAV]
      --loop                repeat the file until stopped
      --capture DEVICE      stream a live ALSA capture device (e.g. default,
                            hw:1,0) instead of a file; paced by the device
Stream:
      --codec CODEC         l16, pcmu or pcma [default: l16]
      --payload-type PT     RTP payload type for L16, 96 to 127 [default: 96]
      --raw                 headerless s16le PCM, the tutorial's stream
                            (320-byte datagrams of 8 kHz mono at ptime 20,
                            port 5005)
      --rate HZ             stream sample rate [default: L16 keeps the
                            source's; pcmu, pcma and --raw use 8000]
      --channels N          stream channels [default: L16 keeps the
                            source's; pcmu, pcma and --raw use 1]
      --ptime MS            milliseconds of audio per packet, 1 to 200
                            [default: 20]
Destination:
      --dest HOST:PORT      where to send (or give it as the last argument;
                            IPv6 as [ADDR]:PORT) [default: 127.0.0.1:5004,
                            with --raw 127.0.0.1:5005]
      --ttl N               multicast TTL / hop limit, 0 to 255 [default: 1]
      --interface IF        multicast interface: a name (eth0) or one of its
                            addresses, IPv4 or IPv6 [default: chosen by the
                            routing table]
      --sdp FILE            write an SDP description of the stream to FILE
                            (for ffplay -protocol_whitelist file,udp,rtp -i FILE)
Process:
      --rt-priority N       SCHED_FIFO priority of the pacing thread, 0 for
                            none (it is refused without CAP_SYS_NICE; the
                            sender says so and runs on) [default: 60]
      --no-mlock            do not lock memory
  -v, --verbose             more log output: debug, -vv trace [default: info]
  -q, --quiet               less: warnings only, -qq errors only
  -h, --help                this text
  -V, --version             the version

SIGTERM or SIGINT stops it; exit status 0 when stopped or done, 1 on an
error, 2 for a bad option.
";

/// A bad option: one line on stderr, exit status 2.
struct Usage(String);

struct Options {
    config: SendConfig,
    rt_priority: i32,
    mlock: bool,
    verbose: u8,
    quiet: u8,
}

fn value<T: std::str::FromStr>(
    parser: &mut lexopt::Parser,
    name: &str,
    range: impl Fn(&T) -> bool,
    expected: &str,
) -> Result<T, Usage> {
    let raw = parser
        .value()
        .map_err(|e| Usage(e.to_string()))?
        .into_string()
        .map_err(|_| Usage(format!("{name}: the value is not valid text")))?;
    match raw.parse::<T>() {
        Ok(v) if range(&v) => Ok(v),
        _ => Err(Usage(format!("{name} '{raw}': expected {expected}"))),
    }
}

fn string(parser: &mut lexopt::Parser, name: &str) -> Result<String, Usage> {
    parser
        .value()
        .map_err(|e| Usage(e.to_string()))?
        .into_string()
        .map_err(|_| Usage(format!("{name}: the value is not valid text")))
}

enum Parsed {
    Run(Box<Options>),
    Help,
    Version,
}

fn parse_args() -> Result<Parsed, Usage> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut positional: Vec<String> = Vec::new();
    let mut raw_format = None;
    let mut looping = false;
    let mut capture = None;
    let mut codec = Encoding::L16;
    let mut payload_type = 96u8;
    let mut payload_type_given = false;
    let mut raw = false;
    let mut rate = None;
    let mut channels = None;
    let mut ptime_ms = 20u32;
    let mut dest = None;
    let mut ttl = 1u8;
    let mut interface = None;
    let mut sdp = None;
    let mut rt_priority = 60i32;
    let mut mlock = true;
    let mut verbose = 0u8;
    let mut quiet = 0u8;
    while let Some(arg) = parser.next().map_err(|e| Usage(e.to_string()))? {
        match arg {
            Long("format") => {
                let v = string(&mut parser, "--format")?;
                raw_format =
                    Some(format::parse_raw(&v).map_err(|e| Usage(format!("--format: {e}")))?);
            }
            Long("loop") => looping = true,
            Long("capture") => capture = Some(string(&mut parser, "--capture")?),
            Long("codec") => {
                let v = string(&mut parser, "--codec")?;
                codec = match v.to_ascii_lowercase().as_str() {
                    "l16" => Encoding::L16,
                    "pcmu" => Encoding::Pcmu,
                    "pcma" => Encoding::Pcma,
                    _ => return Err(Usage(format!("--codec '{v}': expected l16, pcmu or pcma"))),
                };
            }
            Long("payload-type") => {
                payload_type = value(
                    &mut parser,
                    "--payload-type",
                    |p| (96..=127).contains(p),
                    "a dynamic RTP payload type, 96 to 127",
                )?;
                payload_type_given = true;
            }
            Long("raw") => raw = true,
            Long("rate") => {
                rate = Some(value(
                    &mut parser,
                    "--rate",
                    |r| (MIN_RATE..=MAX_RATE).contains(r),
                    &format!("a sample rate from {MIN_RATE} to {MAX_RATE}"),
                )?)
            }
            Long("channels") => {
                channels = Some(value(
                    &mut parser,
                    "--channels",
                    |c| (1..=MAX_CHANNELS).contains(c),
                    &format!("a channel count from 1 to {MAX_CHANNELS}"),
                )?)
            }
            Long("ptime") => {
                ptime_ms = value(
                    &mut parser,
                    "--ptime",
                    |p| (1..=200).contains(p),
                    "milliseconds from 1 to 200",
                )?
            }
            Long("dest") => dest = Some(string(&mut parser, "--dest")?),
            Long("ttl") => ttl = value(&mut parser, "--ttl", |_| true, "a number from 0 to 255")?,
            Long("interface") => interface = Some(string(&mut parser, "--interface")?),
            Long("sdp") => sdp = Some(std::path::PathBuf::from(string(&mut parser, "--sdp")?)),
            Long("rt-priority") => {
                rt_priority = value(
                    &mut parser,
                    "--rt-priority",
                    |p| (0..=99).contains(p),
                    "a priority from 0 (none) to 99",
                )?
            }
            Long("no-mlock") => mlock = false,
            Short('v') | Long("verbose") => verbose = verbose.saturating_add(1),
            Short('q') | Long("quiet") => quiet = quiet.saturating_add(1),
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            Value(v) => positional.push(
                v.into_string()
                    .map_err(|_| Usage("an argument is not valid text".into()))?,
            ),
            _ => return Err(Usage(arg.unexpected().to_string())),
        }
    }
    let mut positional = positional.into_iter();
    let source = match capture {
        Some(device) => {
            if looping || raw_format.is_some() {
                return Err(Usage(
                    "--loop and --format apply to files, not to --capture".into(),
                ));
            }
            SourceConfig::Capture { device }
        }
        None => {
            let Some(input) = positional.next() else {
                return Err(Usage(
                    "no input: give a WAV file, - for standard input, or --capture DEVICE".into(),
                ));
            };
            SourceConfig::File {
                input: Input::from_arg(&input),
                raw: raw_format,
                looping,
            }
        }
    };
    if let Some(extra) = positional.next() {
        if dest.is_some() {
            return Err(Usage(format!(
                "'{extra}': the destination is already given by --dest"
            )));
        }
        dest = Some(extra);
    }
    if let Some(extra) = positional.next() {
        return Err(Usage(format!("unexpected argument '{extra}'")));
    }
    if raw && (codec != Encoding::L16 || payload_type_given) {
        return Err(Usage(
            "--raw sends headerless s16le: --codec and --payload-type do not apply".into(),
        ));
    }
    if payload_type_given && codec != Encoding::L16 {
        return Err(Usage(
            "--payload-type is for L16; PCMU and PCMA use their static types 0 and 8".into(),
        ));
    }
    let output = if raw {
        Output::Raw
    } else {
        Output::rtp(codec, payload_type)
    };
    let default_port = if raw { RAW_PORT } else { RTP_PORT };
    let addr = match dest {
        Some(d) => parse_dest(&d, default_port).map_err(|e| Usage(e.to_string()))?,
        None => std::net::SocketAddr::from(([127, 0, 0, 1], default_port)),
    };
    Ok(Parsed::Run(Box::new(Options {
        config: SendConfig {
            source,
            output,
            rate,
            channels,
            ptime_ms,
            dest: DestConfig {
                addr,
                ttl,
                interface,
            },
            sdp,
        },
        rt_priority,
        mlock,
        verbose,
        quiet,
    })))
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("netspeaker-send {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(Usage(msg)) => {
            eprintln!("netspeaker-send: {msg} (see --help)");
            return ExitCode::from(2);
        }
    };
    // stderr at a terminal, syslog when systemd runs it (the receiver's
    // rule, from the service module).
    let level = service::level_from_verbosity(options.verbose, options.quiet);
    if let Err(e) = service::init_logging("netspeaker-send", LogTarget::choose(false), level) {
        eprintln!("netspeaker-send: {e}");
        return ExitCode::FAILURE;
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            log::error!("cannot install the handler for signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }

    // The stream runs on its own thread, so that the main thread can keep
    // the systemd watchdog fed only while that thread makes progress (a
    // capture read wedged in a driver must get us restarted).
    let heartbeat = Arc::new(Heartbeat::new());
    let pacing = {
        let (stop, heartbeat, config) = (Arc::clone(&stop), Arc::clone(&heartbeat), options.config);
        let (rt_priority, mlock) = (options.rt_priority, options.mlock);
        std::thread::Builder::new().name("pacing".into()).spawn(
            move || -> Result<Option<(Summary, u32)>, send::Error> {
                let Some(mut sender) = Sender::new(&config, &stop, &heartbeat)? else {
                    return Ok(None);
                };
                // Wake-ups on time under load; requests, not requirements.
                if rt_priority > 0 {
                    if let Err(e) = sched::set_realtime(rt_priority) {
                        log::warn!("{e}");
                    }
                }
                if mlock {
                    if let Err(e) = sched::lock_memory() {
                        log::warn!("{e}");
                    }
                }
                let summary = sender.run(&stop, &heartbeat)?;
                Ok(Some((summary, sender.format().rate)))
            },
        )
    };
    let pacing = match pacing {
        Ok(t) => t,
        Err(e) => {
            log::error!("cannot start the pacing thread: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ready once started: a capture device that is busy or missing is
    // waited for with backoff and must not fail the start.
    let notifier = Notifier::from_env();
    let mut notify_log = RateLimit::default_for_input();
    let mut report = |r: Result<(), notify::Error>| {
        if let Err(e) = r {
            if notify_log.check(monotonic_ns()).is_some() {
                log::warn!("{e}");
            }
        }
    };
    report(notifier.ready());
    let mut watchdog = WatchdogGate::from_env(Arc::clone(&heartbeat));
    let poll = watchdog.as_ref().map_or(Duration::from_millis(100), |w| {
        (w.pet_period() / 4).min(Duration::from_millis(100))
    });
    let mut stopping = false;
    while !pacing.is_finished() {
        std::thread::sleep(poll);
        if let Some(w) = watchdog.as_mut() {
            if let Ok(WatchdogCheck::Stalled { stalled_for }) = w.tick(&notifier, monotonic_ns()) {
                log::error!(
                    "the pacing thread made no progress for {:.1} s; not feeding the watchdog",
                    stalled_for.as_secs_f32()
                );
            }
        }
        if !stopping && stop.load(Ordering::Relaxed) {
            stopping = true;
            report(notifier.stopping());
        }
    }
    match pacing.join() {
        Ok(Ok(Some((summary, rate)))) => {
            log::info!(
                "{}: {:.1} s of audio in {} packets sent and {} dropped (network), {} capture \
                 overruns",
                if summary.finished { "done" } else { "stopped" },
                summary.frames as f64 / f64::from(rate),
                summary.packets,
                summary.dropped,
                summary.overruns
            );
            ExitCode::SUCCESS
        }
        Ok(Ok(None)) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
        // With panic = "abort" in release this is unreachable; in a debug
        // build it reports the bug instead of hanging.
        Err(_) => {
            log::error!("the pacing thread panicked");
            ExitCode::FAILURE
        }
    }
}
