//! netspeaker-send: streams a WAV/raw file, standard input or an ALSA
//! capture device to a netspeaker (or any RTP receiver). Parses options and
//! wires the stages of `netspeaker::send`; nothing else lives here.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use netspeaker::audio::format::{self, Encoding, MAX_CHANNELS, MAX_RATE, MIN_RATE};
use netspeaker::net::send::{parse_dest, DestConfig};
use netspeaker::rtp::srtp::Suite;
use netspeaker::send::source::Input;
use netspeaker::send::{
    self, Output, Rtcp, SapOptions, SendConfig, Sender, SourceConfig, SrtpOptions, Summary,
};
use netspeaker::service::log::{self as logging, LogTarget};
use netspeaker::service::notify::{Heartbeat, Notifier, WatchdogGate};
use netspeaker::service::sched::{self, Request};
use netspeaker::service::signals::{Handled, Signals};
use netspeaker::service::usage::{self, number, quantity, text};
use netspeaker::service::{self, Callbacks, Poll};

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
      --codec CODEC         l16, pcmu, pcma or opus [default: l16]; opus is
                            sent at 48 kHz (converted), 1 or 2 channels
      --payload-type PT     RTP payload type for L16 or Opus, 96 to 127
                            [default: 96] (Opus: 97; L16 with --sap: 127,
                            the only one PulseAudio's module-rtp-recv plays
                            L16 under)
      --bitrate RATE        Opus bitrate in bit/s on the network, IP/UDP/RTP
                            headers included, 6k to 510k (e.g. 96k)
                            [default: 96k]
      --fec                 Opus in-band FEC (useinbandfec=1): a lost packet
                            can be rebuilt from the next (voice modes only)
      --expected-loss PCT   Opus: the packet loss FEC plans for, 0 to 100
                            [default: 0; 10 with --fec]
      --raw                 headerless s16le PCM, the tutorial's stream
                            (320-byte datagrams of 8 kHz mono at ptime 20,
                            port 5005)
      --rate HZ             stream sample rate [default: L16 keeps the
                            source's; pcmu, pcma and --raw use 8000]
      --channels N          stream channels [default: L16 keeps the
                            source's; pcmu, pcma and --raw use 1]
      --ptime MS            milliseconds of audio per packet, 1 to 200
                            [default: 20]
      --srtp-key-file FILE  send SRTP (RFC 3711): encrypt and authenticate
                            every packet with the key in FILE, the 40 base64
                            characters of master key and salt (as ffmpeg's
                            -srtp_out_params); FILE must be mode 0600 or 0400
      --srtp-suite SUITE    AES_CM_128_HMAC_SHA1_80 or AES_CM_128_HMAC_SHA1_32
                            [default: AES_CM_128_HMAC_SHA1_80]
Destination:
      --dest HOST:PORT      where to send (or give it as the last argument;
                            IPv6 as [ADDR]:PORT) [default: 127.0.0.1:5004,
                            with --raw 127.0.0.1:5005]
      --ttl N               multicast TTL / hop limit, 0 to 255 [default: 1]
      --interface IF        multicast interface: a name (eth0) or one of its
                            addresses, IPv4 or IPv6 [default: chosen by the
                            routing table]
      --sdp FILE            write an SDP description of the stream to FILE
                            (for ffplay -protocol_whitelist file,udp,rtp -i FILE);
                            with SRTP it holds the key (RTP/SAVP, a=crypto)
                            and is written mode 0600
      --sap NAME            announce the stream by SAP (RFC 2974) as session
                            NAME, every 5 s, and delete it at exit (what
                            PulseAudio's module-rtp-recv and netspeaker --sap
                            listen to)
      --sap-address ADDR[:PORT]
                            where to announce [default: 224.0.0.56:9875]
      --rtcp-mux            send the RTCP sender reports and BYE on the RTP
                            port (RFC 5761) instead of port+1
      --no-rtcp             send no RTCP (by default an RTP stream carries
                            sender reports, the first with the first packet
                            then every 0.5-1.5 s, and a BYE at the end, to
                            port+1; SRTCP with --srtp-key-file)
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

struct Options {
    config: SendConfig,
    rt_priority: i32,
    mlock: bool,
    verbose: u8,
    quiet: u8,
}

enum Parsed {
    Run(Box<Options>),
    Help,
    Version,
}

fn parse_args() -> Result<Parsed, usage::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_env();
    let mut positional: Vec<String> = Vec::new();
    let mut raw_format = None;
    let mut looping = false;
    let mut capture = None;
    let mut codec = Encoding::L16;
    let mut opus = netspeaker::audio::opus::EncoderConfig::default();
    let mut expected_loss = None;
    let mut opus_option = None;
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
    let mut sap_name = None;
    let mut sap_address = None;
    let mut srtp_key_file = None;
    let mut srtp_suite = None;
    let mut rtcp_mux = false;
    let mut no_rtcp = false;
    let mut rt_priority = 60i32;
    let mut mlock = true;
    let mut verbose = 0u8;
    let mut quiet = 0u8;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("format") => {
                let v = text(&mut parser, "--format")?;
                raw_format = Some(
                    format::parse_raw(&v)
                        .map_err(|e| usage::Error::value("--format", e.to_string()))?,
                );
            }
            Long("loop") => looping = true,
            Long("capture") => capture = Some(text(&mut parser, "--capture")?),
            Long("codec") => {
                let v = text(&mut parser, "--codec")?;
                codec = match v.to_ascii_lowercase().as_str() {
                    "l16" => Encoding::L16,
                    "pcmu" => Encoding::Pcmu,
                    "pcma" => Encoding::Pcma,
                    "opus" => Encoding::Opus,
                    _ => {
                        return Err(usage::Error::value(
                            "--codec",
                            format!("'{v}' is not l16, pcmu, pcma or opus"),
                        ))
                    }
                };
            }
            Long("bitrate") => {
                let v = text(&mut parser, "--bitrate")?;
                let digits = v.strip_suffix(['k', 'K']);
                let scale = if digits.is_some() { 1000 } else { 1 };
                let n: u32 = quantity(
                    "--bitrate",
                    digits.unwrap_or(&v),
                    1..=510_000,
                    "a bitrate (bit/s, or kbit/s with k)",
                )?;
                opus.bitrate_bps = n.saturating_mul(scale);
                opus_option = Some("--bitrate");
                if !(6_000..=510_000).contains(&opus.bitrate_bps) {
                    return Err(usage::Error::value(
                        "--bitrate",
                        format!("'{v}' is not an Opus bitrate from 6k to 510k"),
                    ));
                }
            }
            Long("fec") => {
                opus.fec = true;
                opus_option = Some("--fec");
            }
            Long("expected-loss") => {
                opus_option = Some("--expected-loss");
                expected_loss = Some(quantity(
                    "--expected-loss",
                    &text(&mut parser, "--expected-loss")?,
                    0..=100,
                    "a percentage",
                )?)
            }
            Long("payload-type") => {
                payload_type = quantity(
                    "--payload-type",
                    &text(&mut parser, "--payload-type")?,
                    96..=127,
                    "a dynamic RTP payload type",
                )?;
                payload_type_given = true;
            }
            Long("raw") => raw = true,
            Long("rate") => {
                rate = Some(quantity(
                    "--rate",
                    &text(&mut parser, "--rate")?,
                    MIN_RATE..=MAX_RATE,
                    "a sample rate in Hz",
                )?)
            }
            Long("channels") => {
                channels = Some(quantity(
                    "--channels",
                    &text(&mut parser, "--channels")?,
                    1..=MAX_CHANNELS,
                    "a channel count",
                )?)
            }
            Long("ptime") => {
                ptime_ms = quantity(
                    "--ptime",
                    &text(&mut parser, "--ptime")?,
                    1..=200,
                    "a number of milliseconds",
                )?
            }
            Long("dest") => dest = Some(text(&mut parser, "--dest")?),
            Long("ttl") => ttl = number("--ttl", &text(&mut parser, "--ttl")?, 0..=255)?,
            Long("interface") => interface = Some(text(&mut parser, "--interface")?),
            Long("sap") => {
                let v = text(&mut parser, "--sap")?;
                if v.is_empty() || v.contains(['\r', '\n']) {
                    return Err(usage::Error::value(
                        "--sap",
                        "the session name must be one non-empty line",
                    ));
                }
                sap_name = Some(v)
            }
            Long("sap-address") => sap_address = Some(text(&mut parser, "--sap-address")?),
            Long("sdp") => sdp = Some(std::path::PathBuf::from(text(&mut parser, "--sdp")?)),
            Long("srtp-key-file") => {
                srtp_key_file = Some(std::path::PathBuf::from(text(
                    &mut parser,
                    "--srtp-key-file",
                )?))
            }
            Long("srtp-suite") => {
                srtp_suite = Some(
                    Suite::parse(&text(&mut parser, "--srtp-suite")?)
                        .map_err(|e| usage::Error::rule(e.to_string()))?,
                )
            }
            Long("rt-priority") => {
                rt_priority = quantity(
                    "--rt-priority",
                    &text(&mut parser, "--rt-priority")?,
                    0..=99,
                    "a priority",
                )?
            }
            Long("rtcp-mux") => rtcp_mux = true,
            Long("no-rtcp") => no_rtcp = true,
            Long("no-mlock") => mlock = false,
            Short('v') | Long("verbose") => verbose = verbose.saturating_add(1),
            Short('q') | Long("quiet") => quiet = quiet.saturating_add(1),
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            Value(v) => positional.push(
                v.into_string()
                    .map_err(|_| usage::Error::rule("an argument is not valid UTF-8 text"))?,
            ),
            _ => return Err(arg.unexpected().into()),
        }
    }
    let mut positional = positional.into_iter();
    let source = match capture {
        Some(device) => {
            if looping || raw_format.is_some() {
                return Err(usage::Error::rule(
                    "--loop and --format apply to files, not to --capture",
                ));
            }
            SourceConfig::Capture { device }
        }
        None => {
            let Some(input) = positional.next() else {
                return Err(usage::Error::rule(
                    "no input: give a WAV file, - for standard input, or --capture DEVICE",
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
            return Err(usage::Error::rule(format!(
                "'{extra}': the destination is already given by --dest"
            )));
        }
        dest = Some(extra);
    }
    if let Some(extra) = positional.next() {
        return Err(usage::Error::rule(format!("unexpected argument '{extra}'")));
    }
    if raw && (codec != Encoding::L16 || payload_type_given) {
        return Err(usage::Error::rule(
            "--raw sends headerless s16le: --codec and --payload-type do not apply",
        ));
    }
    if payload_type_given && !matches!(codec, Encoding::L16 | Encoding::Opus) {
        return Err(usage::Error::rule(
            "--payload-type is for L16 and Opus; PCMU and PCMA use their static types 0 and 8",
        ));
    }
    if let Some(option) = opus_option.filter(|_| codec != Encoding::Opus) {
        return Err(usage::Error::rule(format!(
            "{option} sets the Opus encoder: add --codec opus"
        )));
    }
    if codec == Encoding::Opus && !payload_type_given {
        // What ffmpeg and most SDP offers use for Opus.
        payload_type = 97;
    }
    opus.expected_loss_pct = expected_loss.unwrap_or(if opus.fec { 10 } else { 0 });
    if srtp_suite.is_some() && srtp_key_file.is_none() {
        return Err(usage::Error::rule(
            "--srtp-suite needs --srtp-key-file: without a key nothing is encrypted",
        ));
    }
    if raw && srtp_key_file.is_some() {
        return Err(usage::Error::rule(
            "--srtp-key-file protects RTP; headerless --raw cannot carry SRTP: drop one",
        ));
    }
    if rtcp_mux && no_rtcp {
        return Err(usage::Error::rule(
            "--rtcp-mux says where RTCP goes, --no-rtcp that none goes: drop one",
        ));
    }
    if raw && rtcp_mux {
        return Err(usage::Error::rule(
            "--rtcp-mux is for RTP; headerless --raw sends no RTCP: drop one",
        ));
    }
    let rtcp = if no_rtcp {
        Rtcp::Off
    } else if rtcp_mux {
        Rtcp::Mux
    } else {
        Rtcp::NextPort
    };
    let srtp = srtp_key_file.map(|key_file| SrtpOptions {
        key_file,
        suite: srtp_suite.unwrap_or_default(),
    });
    // PulseAudio's receiver (its GStreamer backend) takes L16 only as PT
    // 127, its own sender's choice; any receiver reads the type from the
    // announcement, so 127 costs nothing.
    if sap_name.is_some() && !payload_type_given {
        payload_type = 127;
    }
    let output = if raw {
        Output::Raw
    } else {
        Output::rtp(codec, payload_type)
    };
    let default_port = if raw { RAW_PORT } else { RTP_PORT };
    let addr = match dest {
        Some(d) => parse_dest(&d, default_port).map_err(|e| usage::Error::rule(e.to_string()))?,
        None => std::net::SocketAddr::from(([127, 0, 0, 1], default_port)),
    };
    let sap = match (sap_name, sap_address) {
        (Some(name), address) => Some(SapOptions {
            name,
            addr: match address {
                Some(a) => parse_dest(&a, netspeaker::net::sap::SAP_PORT)
                    .map_err(|e| usage::Error::value("--sap-address", e.to_string()))?,
                None => netspeaker::net::sap::default_address(),
            },
        }),
        (None, Some(_)) => {
            return Err(usage::Error::rule(
                "--sap-address needs --sap NAME: the session to announce",
            ))
        }
        (None, None) => None,
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
            srtp,
            sap,
            opus,
            rtcp,
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
        Err(e) => return e.exit("netspeaker-send"),
    };
    // stderr at a terminal, syslog when systemd runs it (the receiver's
    // rule, from the service module).
    let level = logging::level_from_verbosity(options.verbose, options.quiet);
    if let Err(e) = logging::init("netspeaker-send", LogTarget::choose(false), level) {
        eprintln!("netspeaker-send: {e}");
        return ExitCode::FAILURE;
    }
    // TERM and INT only: a hangup of the terminal ends the sender, as the
    // default action always did.
    let signals = match Signals::install(Handled::default()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::FAILURE;
        }
    };

    // The stream runs on its own thread, so that the main thread can keep
    // the systemd watchdog fed only while that thread makes progress (a
    // capture read wedged in a driver must get us restarted).
    let heartbeat = Arc::new(Heartbeat::new());
    let pacing = {
        let (stop, heartbeat, config) =
            (signals.stop_flag(), Arc::clone(&heartbeat), options.config);
        let request = Request {
            priority: options.rt_priority,
            lock_memory: options.mlock,
        };
        std::thread::Builder::new().name("pacing".into()).spawn(
            move || -> Result<Option<(Summary, u32)>, send::Error> {
                let Some(mut sender) = Sender::new(&config, &stop, &heartbeat)? else {
                    return Ok(None);
                };
                // Wake-ups on time under load; requests, not requirements.
                for refusal in sched::enter_realtime(request).iter() {
                    log::warn!("{refusal}");
                }
                let summary = sender.run(&stop, &heartbeat);
                sender.end_announcement();
                let summary = summary?;
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
    // waited for with backoff and must not fail the start. The first poll
    // says ready even when the thread already ended (an empty file), so
    // a Type=notify unit never sees an exit before READY=1.
    let notifier = Notifier::from_env();
    let mut announced = false;
    let mut poll = || {
        if announced && pacing.is_finished() {
            return Poll::Finished;
        }
        announced = true;
        Poll::Ready(None)
    };
    // The sender has no statistics line and no device to reopen (it
    // handles neither SIGUSR1 nor SIGHUP).
    let (mut statistics, mut reopen) = (|| {}, || {});
    service::supervise(
        service::Config {
            signals: &signals,
            notifier: &notifier,
            watchdog: WatchdogGate::from_env(Arc::clone(&heartbeat)),
            watched: "pacing",
            poll_every: Duration::from_millis(100),
            statistics_every: None,
        },
        Callbacks {
            poll: &mut poll,
            statistics: &mut statistics,
            reopen: &mut reopen,
        },
    );
    // After a stop the pacing thread sees the same flag and ends within a
    // packet time; its summary is the last line.
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
