//! The sender's stages: source (WAV, raw, stdin, ALSA capture) → convert
//! (rate, channels) → packetize (RTP or headerless) → protect (SRTP, with
//! a key) → pace (absolute deadline on the monotonic clock) → socket; and
//! the SDP description, announced by SAP with `--sap` ([`announce`]).
//! `Sender` wires them: a file or standard input is paced by the monotonic
//! clock (packet k leaves at start + k · ptime), a capture device by its
//! own clock (each blocking read of one ptime of audio is one packet).
//! Everything is opened and sized in `Sender::new`; `run` allocates
//! nothing.

pub mod announce;
pub mod convert;
pub mod pace;
pub mod packetize;
pub mod report;
pub mod sdp;
pub mod source;
pub mod wav;

use core::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::alsa::capture::{self, Capture};
use crate::alsa::AlsaError;
use crate::audio::format::{Encoding, StreamFormat, MAX_CHANNELS, MAX_RATE, MIN_RATE};
use crate::net::send::{self as dest, Dest, DestConfig, SendStatus};
use crate::rtp::rtcp::MAX_REPORT_LEN;
use crate::rtp::srtp::{self, MasterKey, SrtpContext, SrtpError, Suite};
use crate::service::clock::{monotonic_ns, realtime_ns};
use crate::service::notify::Heartbeat;
use crate::service::ratelimit::RateLimit;
use convert::Converter;
use pace::Pacer;
use packetize::{Framing, Packetizer, PacketizerConfig};
use report::Reporter;
use source::{FileSource, Input};

/// Where the audio comes from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A file or standard input: WAV, or raw PCM in `raw` format.
    File {
        input: Input,
        raw: Option<StreamFormat>,
        looping: bool,
    },
    /// A live ALSA capture device.
    Capture { device: String },
}

/// What goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// RTP with `encoding` (L16, PCMU or PCMA) and this payload type.
    Rtp {
        encoding: Encoding,
        payload_type: u8,
    },
    /// Headerless s16le, the tutorial's stream.
    Raw,
}

impl Output {
    /// RTP L16 with the dynamic payload type 96, or PCMU (0) / PCMA (8).
    pub fn rtp(encoding: Encoding, dynamic_payload_type: u8) -> Output {
        let payload_type = match encoding {
            Encoding::Pcmu => 0,
            Encoding::Pcma => 8,
            Encoding::L16 | Encoding::S16Le | Encoding::Opus => dynamic_payload_type,
        };
        Output::Rtp {
            encoding,
            payload_type,
        }
    }
}

/// Where RTCP sender reports go (RTP output only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rtcp {
    /// To the RTP port + 1 (RFC 3550 §11) [default].
    #[default]
    NextPort,
    /// On the RTP port itself (`--rtcp-mux`, RFC 5761).
    Mux,
    /// None (`--no-rtcp`).
    Off,
}

/// The whole sender's configuration, one field per option.
#[derive(Debug, Clone)]
pub struct SendConfig {
    pub source: SourceConfig,
    pub output: Output,
    /// Stream rate (`--rate`); default: L16 keeps the source's, PCMU/PCMA
    /// and raw use 8000.
    pub rate: Option<u32>,
    /// Stream channels (`--channels`); defaults as for `rate`, 1.
    pub channels: Option<u16>,
    /// Packet duration in milliseconds (`--ptime`).
    pub ptime_ms: u32,
    pub dest: DestConfig,
    /// Where to write the SDP description (`--sdp`).
    pub sdp: Option<PathBuf>,
    /// Send SRTP (`--srtp-key-file`, `--srtp-suite`).
    pub srtp: Option<SrtpOptions>,
    /// Announce the stream by SAP (`--sap NAME`, `--sap-address`).
    pub sap: Option<SapOptions>,
    /// Opus encoder settings (`--bitrate`, `--fec`, `--expected-loss`),
    /// used with `--codec opus`.
    pub opus: crate::audio::opus::EncoderConfig,
    /// RTCP sender reports and BYE (`--rtcp-mux`, `--no-rtcp`).
    pub rtcp: Rtcp,
}

/// Opus's `--bitrate` is what the stream costs on the network, headers
/// included, as WebRTC's audio sender counts its target (it takes the
/// per-packet transport overhead off the allocated rate before setting
/// the encoder): the encoder gets what is left after the IPv4/IPv6, UDP
/// and RTP headers (and the SRTP tag) of every packet. At the usual
/// 20 ms that is 16 kbit/s over IPv4; a longer `--ptime` leaves the codec
/// more. Never below libopus's 6 kbit/s.
pub fn codec_bitrate_bps(
    wire_bps: u32,
    frames_per_packet: usize,
    ipv6: bool,
    tag_bytes: usize,
) -> u32 {
    let ip = if ipv6 { 40 } else { 20 };
    let header_bits = (ip + 8 + 12 + tag_bytes) as u64 * 8;
    let packets_per_s = f64::from(crate::audio::opus::RATE) / frames_per_packet.max(1) as f64;
    let overhead = (header_bits as f64 * packets_per_s).round() as u32;
    wire_bps.saturating_sub(overhead).max(6_000)
}

/// The session name and the SAP destination of `--sap`.
#[derive(Debug, Clone)]
pub struct SapOptions {
    /// The SDP session name (`s=`) listeners choose the stream by.
    pub name: String,
    /// Where announcements go [default: 224.0.0.56:9875].
    pub addr: std::net::SocketAddr,
}

/// The key file and suite of an SRTP stream.
#[derive(Debug, Clone)]
pub struct SrtpOptions {
    /// Holds the 40-character base64 master key and salt.
    pub key_file: PathBuf,
    pub suite: Suite,
}

#[derive(Debug)]
pub enum Error {
    Source(source::Error),
    Capture(AlsaError),
    Convert(convert::Error),
    Packetize(packetize::Error),
    Dest(dest::Error),
    Sdp {
        path: PathBuf,
        err: io::Error,
    },
    /// `--sdp` with `--raw`: SDP describes RTP sessions only.
    SdpRaw,
    /// `--sap` with `--raw`: SAP announces RTP sessions only.
    SapRaw,
    /// `--sap` with SRTP: the announcement would carry the key in the clear.
    SapSrtp,
    Announce(announce::Error),
    /// The SRTP key file cannot be used.
    SrtpKey(srtp::key::Error),
    /// `--srtp-key-file` with `--raw`: SRTP protects RTP packets only.
    SrtpRaw,
    /// Protecting a packet failed (a buffer sized wrong: a bug).
    Srtp(SrtpError),
    Ptime(u32),
    /// RTCP to port+1 of the last port: there is none.
    RtcpPort(u16),
    /// `--rtcp-mux` with `--raw`: headerless PCM has no RTCP.
    RtcpRaw,
    /// Opus: the stream must be 48 kHz, 1 or 2 channels, 2.5-60 ms frames.
    OpusFormat {
        rate: u32,
        channels: u16,
        ptime_ms: u32,
    },
    Rate(u32),
    Channels(u16),
    Random(io::Error),
    /// A reopened capture device came back in another format.
    CaptureChanged {
        device: String,
        was: StreamFormat,
        now: StreamFormat,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Source(e) => e.fmt(f),
            Error::Capture(e) => e.fmt(f),
            Error::Convert(e) => e.fmt(f),
            Error::Packetize(e) => e.fmt(f),
            Error::Dest(e) => e.fmt(f),
            Error::Sdp { path, err } => {
                write!(f, "cannot write the SDP file {}: {err}", path.display())
            }
            Error::SapRaw => write!(
                f,
                "--sap announces an RTP stream; headerless --raw has none: drop one of them"
            ),
            Error::SapSrtp => write!(
                f,
                "--sap with --srtp-key-file would multicast the key in the clear: \
                 hand the SDP (--sdp) to receivers privately instead"
            ),
            Error::Announce(e) => write!(f, "{e}"),
            Error::SdpRaw => write!(
                f,
                "--sdp describes an RTP stream; headerless --raw has none: drop one of them"
            ),
            Error::SrtpKey(e) => e.fmt(f),
            Error::SrtpRaw => write!(
                f,
                "--srtp-key-file protects RTP; headerless --raw has no header: drop one of them"
            ),
            Error::Srtp(e) => write!(f, "{e} (a bug: please report)"),
            Error::OpusFormat {
                rate,
                channels,
                ptime_ms,
            } => write!(
                f,
                "Opus is sent at 48000 Hz, 1 or 2 channels, ptime 5, 10, 20, 40 or 60 ms \
                 (asked: {rate} Hz, {channels} channels, {ptime_ms} ms): drop --rate, \
                 use --channels 1 or 2, and one of those --ptime values"
            ),
            Error::RtcpPort(p) => write!(
                f,
                "RTCP goes to the RTP port + 1, and port {p} has none: send to an even port \
                 below 65535, or use --rtcp-mux or --no-rtcp"
            ),
            Error::RtcpRaw => write!(
                f,
                "--rtcp-mux sends RTCP beside RTP; headerless --raw has no RTCP: drop one of them"
            ),
            Error::Ptime(p) => write!(f, "--ptime {p} is outside 1 to 200 ms"),
            Error::Rate(r) => write!(f, "--rate {r} is outside {MIN_RATE} to {MAX_RATE}"),
            Error::Channels(c) => write!(f, "--channels {c} is outside 1 to {MAX_CHANNELS}"),
            Error::Random(e) => write!(f, "cannot read /dev/urandom: {e}"),
            Error::CaptureChanged { device, was, now } => write!(
                f,
                "capture device '{device}' came back as {now} instead of {was}: restart \
                 netspeaker-send"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<source::Error> for Error {
    fn from(e: source::Error) -> Self {
        Error::Source(e)
    }
}
impl From<AlsaError> for Error {
    fn from(e: AlsaError) -> Self {
        Error::Capture(e)
    }
}
impl From<convert::Error> for Error {
    fn from(e: convert::Error) -> Self {
        Error::Convert(e)
    }
}
impl From<dest::Error> for Error {
    fn from(e: dest::Error) -> Self {
        Error::Dest(e)
    }
}

/// How a run ended and what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The source ended (false: stopped by a signal).
    pub finished: bool,
    pub packets: u64,
    pub frames: u64,
    /// Datagrams dropped for transient network errors.
    pub dropped: u64,
    /// Capture overruns recovered.
    pub overruns: u64,
}

/// The stream's format from the output choice, the source and the options.
pub fn stream_format(
    output: Output,
    source: StreamFormat,
    rate: Option<u32>,
    channels: Option<u16>,
) -> StreamFormat {
    let (encoding, default_rate, default_channels) = match output {
        Output::Rtp {
            encoding: Encoding::L16 | Encoding::S16Le,
            ..
        } => (Encoding::L16, source.rate, source.channels),
        // RFC 7587: the RTP clock is 48 kHz; mono or stereo.
        Output::Rtp {
            encoding: Encoding::Opus,
            ..
        } => (Encoding::Opus, 48_000, source.channels.min(2)),
        Output::Rtp { encoding, .. } => (encoding, 8000, 1),
        Output::Raw => (Encoding::S16Le, 8000, 1),
    };
    StreamFormat {
        encoding,
        rate: rate.unwrap_or(default_rate),
        channels: channels.unwrap_or(default_channels),
    }
}

/// Writes the SDP file whole, then renames it into place, so a player
/// polling for it never reads half of it. With an SRTP key in it, only the
/// owner may read it.
fn write_sdp(path: &std::path::Path, text: &str, secret: bool) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// SSRC, first sequence number and first timestamp, random as RFC 3550
/// asks (so a restarted sender is told apart from the old one).
fn random_start() -> Result<(u32, u16, u32), Error> {
    let mut b = [0u8; 10];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(Error::Random)?;
    Ok((
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_ne_bytes([b[4], b[5]]),
        u32::from_ne_bytes([b[6], b[7], b[8], b[9]]),
    ))
}

enum Source {
    File(FileSource),
    Capture {
        device: String,
        capture: Capture,
        /// What was asked of the device, to ask again after it vanished.
        want: StreamFormat,
        period_frames: usize,
    },
}

/// Sleeps `d` in small steps, returning early when `stop` is set. Waiting
/// for a device is progress for the watchdog: each step beats.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool, heartbeat: &Heartbeat) {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let s = left.min(step);
        std::thread::sleep(s);
        heartbeat.beat();
        left -= s;
    }
}

/// First wait before retrying a busy or vanished capture device; doubles
/// up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Calls `open` until it succeeds, retrying with backoff (from `first`
/// doubling to `MAX_BACKOFF`) while `retry` says the error is worth
/// waiting out. `Ok(None)`: `stop` was set while waiting.
pub fn retry_with_backoff<T>(
    mut open: impl FnMut() -> Result<T, AlsaError>,
    retry: impl Fn(&AlsaError) -> bool,
    first: Duration,
    stop: &AtomicBool,
    heartbeat: &Heartbeat,
) -> Result<Option<T>, AlsaError> {
    let mut backoff = first;
    let mut limit = RateLimit::default_for_input();
    loop {
        match open() {
            Ok(c) => return Ok(Some(c)),
            Err(e) if retry(&e) => {
                if let Some(s) = limit.check(monotonic_ns()) {
                    log::warn!(
                        "{e}; retrying in {:.1} s ({s} messages suppressed)",
                        backoff.as_secs_f32()
                    );
                }
                sleep_unless_stopped(backoff, stop, heartbeat);
                if stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens a capture device, waiting while another program holds it.
pub fn open_capture_with_retry(
    device: &str,
    want: StreamFormat,
    period_frames: usize,
    stop: &AtomicBool,
    heartbeat: &Heartbeat,
) -> Result<Option<Capture>, AlsaError> {
    retry_with_backoff(
        || Capture::open(device, want, period_frames),
        AlsaError::is_busy,
        FIRST_BACKOFF,
        stop,
        heartbeat,
    )
}

pub struct Sender {
    source: Source,
    converter: Converter,
    packetizer: Packetizer,
    dest: Dest,
    format: StreamFormat,
    frames_per_packet: usize,
    samples: Vec<i16>,
    datagram: Vec<u8>,
    srtp: Option<SrtpContext>,
    overrun_log: RateLimit,
    /// Overruns counted by capture handles since replaced.
    overruns_before: u64,
    /// `--sap`: announces while the sender lives, deletes when dropped.
    announcer: Option<announce::Announcer>,
    /// RTCP sender reports (RTP output, unless `--no-rtcp`).
    rtcp: Option<RtcpOut>,
}

/// The report schedule, its buffer, and its socket (`None`: RTCP shares
/// the RTP socket, `--rtcp-mux`).
struct RtcpOut {
    reporter: Reporter,
    buf: Vec<u8>,
    dest: Option<Dest>,
}

impl Sender {
    /// Opens the source, the socket and (for `--sdp`) writes the SDP file.
    /// Returns `None` when `stop` was set while waiting for a busy device
    /// (the wait beats `heartbeat`).
    pub fn new(
        config: &SendConfig,
        stop: &AtomicBool,
        heartbeat: &Heartbeat,
    ) -> Result<Option<Sender>, Error> {
        if !(1..=200).contains(&config.ptime_ms) {
            return Err(Error::Ptime(config.ptime_ms));
        }
        if let Some(r) = config.rate.filter(|r| !(MIN_RATE..=MAX_RATE).contains(r)) {
            return Err(Error::Rate(r));
        }
        if let Some(c) = config.channels.filter(|c| !(1..=MAX_CHANNELS).contains(c)) {
            return Err(Error::Channels(c));
        }
        if config.sdp.is_some() && config.output == Output::Raw {
            return Err(Error::SdpRaw);
        }
        if config.srtp.is_some() && config.output == Output::Raw {
            return Err(Error::SrtpRaw);
        }
        if config.sap.is_some() && config.output == Output::Raw {
            return Err(Error::SapRaw);
        }
        if config.sap.is_some() && config.srtp.is_some() {
            return Err(Error::SapSrtp);
        }
        if config.rtcp == Rtcp::Mux && config.output == Output::Raw {
            return Err(Error::RtcpRaw);
        }
        // Read before anything opens: a key that cannot be used stops the
        // start, it never falls back to plaintext.
        let srtp = match &config.srtp {
            Some(o) => Some((
                MasterKey::read_file(&o.key_file).map_err(Error::SrtpKey)?,
                o.suite,
            )),
            None => None,
        };
        let (source, source_format, format) = match &config.source {
            SourceConfig::File {
                input,
                raw,
                looping,
            } => {
                // Sized for one packet at the highest rate we accept.
                let max_frames = (MAX_RATE as usize) * config.ptime_ms as usize / 1000 + 1;
                let file = FileSource::open(input, *raw, *looping, max_frames)?;
                let src = file.format();
                let format = stream_format(config.output, src, config.rate, config.channels);
                (Source::File(file), src, format)
            }
            SourceConfig::Capture { device } => {
                // Ask the device for the stream's format, so that normally
                // nothing needs converting; L16 without --rate/--channels
                // asks for 48 kHz stereo, what most devices do natively.
                let wanted = StreamFormat {
                    encoding: Encoding::S16Le,
                    rate: 48_000,
                    channels: 2,
                };
                let format = stream_format(config.output, wanted, config.rate, config.channels);
                let period = format.frames_for_ms(config.ptime_ms);
                let format = StreamFormat {
                    encoding: Encoding::S16Le,
                    ..format
                };
                let Some(capture) =
                    open_capture_with_retry(device, format, period, stop, heartbeat)?
                else {
                    return Ok(None);
                };
                let src = capture.format();
                let format = stream_format(config.output, src, config.rate, config.channels);
                let source = Source::Capture {
                    device: device.clone(),
                    period_frames: capture.period_frames(),
                    want: format,
                    capture,
                };
                (source, src, format)
            }
        };
        let frames_per_packet = format.frames_for_ms(config.ptime_ms);
        if format.encoding == Encoding::Opus
            && (format.rate != crate::audio::opus::RATE
                || format.channels > 2
                || ![5, 10, 20, 40, 60].contains(&config.ptime_ms))
        {
            return Err(Error::OpusFormat {
                rate: format.rate,
                channels: format.channels,
                ptime_ms: config.ptime_ms,
            });
        }
        let converter = Converter::new(
            source_format.rate,
            source_format.channels,
            format.rate,
            format.channels,
            frames_per_packet,
        )?;
        let (ssrc, first_seq, first_timestamp) = random_start()?;
        let framing = match config.output {
            Output::Rtp { payload_type, .. } => Framing::Rtp { payload_type },
            Output::Raw => Framing::Raw,
        };
        let opus = crate::audio::opus::EncoderConfig {
            bitrate_bps: codec_bitrate_bps(
                config.opus.bitrate_bps,
                frames_per_packet,
                config.dest.addr.is_ipv6(),
                srtp.as_ref().map_or(0, |(_, suite)| suite.rtp_tag_len()),
            ),
            ..config.opus
        };
        let packetizer = Packetizer::new(&PacketizerConfig {
            format,
            framing,
            frames_per_packet,
            ssrc,
            first_seq,
            first_timestamp,
            opus,
        })
        .map_err(Error::Packetize)?;
        let dest = Dest::open(&config.dest)?;
        let rtcp_addr = match (framing, config.rtcp) {
            (Framing::Raw, _) | (_, Rtcp::Off) => None,
            (_, Rtcp::Mux) => Some(config.dest.addr),
            (_, Rtcp::NextPort) => {
                let port = config.dest.addr.port();
                let next = port.checked_add(1).ok_or(Error::RtcpPort(port))?;
                Some(std::net::SocketAddr::new(config.dest.addr.ip(), next))
            }
        };
        let rtcp = match rtcp_addr {
            None => None,
            Some(addr) => {
                let own = match config.rtcp {
                    Rtcp::NextPort => {
                        let mut d = Dest::open(&DestConfig {
                            addr,
                            ..config.dest.clone()
                        })?;
                        d.quiet_drops();
                        Some(d)
                    }
                    _ => None,
                };
                let host = dest
                    .local_addr()
                    .map(|a| a.ip())
                    .unwrap_or(config.dest.addr.ip());
                Some(RtcpOut {
                    // RFC 7022 asks for a CNAME unique per session and
                    // stable through it; the SSRC is random per start.
                    reporter: Reporter::new(
                        ssrc,
                        &format!("{ssrc:08x}@{host}"),
                        u64::from(ssrc) << 32 | u64::from(first_timestamp),
                    ),
                    buf: vec![0; MAX_REPORT_LEN + srtp::MAX_OVERHEAD],
                    dest: own,
                })
            }
        };
        let mut description = None;
        if let Framing::Rtp { payload_type } = framing {
            let origin = dest
                .local_addr()
                .map(|a| a.ip())
                .unwrap_or(config.dest.addr.ip());
            let text = sdp::describe(&sdp::SdpParams {
                dest: config.dest.addr,
                origin,
                format,
                payload_type,
                ptime_ms: config.ptime_ms,
                opus_fec: config.opus.fec,
                ttl: config.dest.ttl,
                session_id: u64::from(ssrc),
                crypto: srtp.as_ref().map(|(key, suite)| sdp::Crypto {
                    suite: *suite,
                    key: key.to_base64(),
                }),
                rtcp: match (config.rtcp, rtcp_addr) {
                    (_, None) => sdp::RtcpLine::None,
                    (Rtcp::Mux, _) => sdp::RtcpLine::Mux,
                    (_, Some(a)) => sdp::RtcpLine::Port(a.port()),
                },
                name: config
                    .sap
                    .as_ref()
                    .map_or_else(|| "netspeaker-send".to_string(), |s| s.name.clone()),
            });
            if let Some(path) = &config.sdp {
                write_sdp(path, &text, srtp.is_some()).map_err(|err| Error::Sdp {
                    path: path.clone(),
                    err,
                })?;
            }
            description = Some(text);
        }
        // After the socket and the file: a start that fails announces
        // nothing. Dropping the sender deletes the announcement.
        let announcer = match (&config.sap, description) {
            (Some(sap), Some(text)) => Some(
                announce::Announcer::start(&announce::AnnounceConfig {
                    dest: DestConfig {
                        addr: sap.addr,
                        ttl: config.dest.ttl,
                        interface: config.dest.interface.clone(),
                    },
                    sdp: text,
                    name: sap.name.clone(),
                })
                .map_err(Error::Announce)?,
            ),
            _ => None,
        };
        log::info!(
            "{} from {} Hz/{} ch to {} as {}, {} frames per packet, SSRC {:08x}",
            match &config.source {
                SourceConfig::File { input, .. } => input.to_string(),
                SourceConfig::Capture { device } => format!("capture device '{device}'"),
            },
            source_format.rate,
            source_format.channels,
            config.dest.addr,
            format,
            frames_per_packet,
            ssrc
        );
        if let Some((_, suite)) = &srtp {
            log::info!("SRTP: {suite}, payload encrypted and every packet authenticated");
        }
        let srtp = srtp.map(|(key, suite)| SrtpContext::new(&key, suite));
        let overhead = srtp.as_ref().map_or(0, SrtpContext::overhead);
        Ok(Some(Sender {
            source,
            converter,
            datagram: vec![0; packetizer.max_datagram_len() + overhead],
            srtp,
            packetizer,
            dest,
            format,
            frames_per_packet,
            samples: vec![0; frames_per_packet * usize::from(format.channels)],
            overrun_log: RateLimit::default_for_input(),
            overruns_before: 0,
            announcer,
            rtcp,
        }))
    }

    /// Sends the SAP deletion now (`--sap`), as dropping the sender would.
    pub fn end_announcement(&mut self) {
        if let Some(a) = self.announcer.take() {
            a.stop();
        }
    }

    /// The stream's format on the wire.
    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Streams until the source ends or `stop` is set. `heartbeat` beats
    /// once per packet (and per backoff step while a vanished capture
    /// device is reopened), for the systemd watchdog.
    pub fn run(&mut self, stop: &AtomicBool, heartbeat: &Heartbeat) -> Result<Summary, Error> {
        let mut pacer = match self.source {
            Source::File(_) => Some(Pacer::new(
                monotonic_ns(),
                self.format.rate,
                self.frames_per_packet,
            )),
            Source::Capture { .. } => None,
        };
        let mut summary = Summary {
            finished: false,
            packets: 0,
            frames: 0,
            dropped: 0,
            overruns: 0,
        };
        // The last packet's timestamp, deadline and frames: the BYE's
        // report says where the media clock stood at the end.
        let mut last: Option<(u32, Option<u64>, usize)> = None;
        while !stop.load(Ordering::Relaxed) {
            heartbeat.beat();
            let frames = match self.fill(stop) {
                Ok(n) => n,
                Err(Error::Capture(e @ AlsaError::DeviceLost { .. })) => {
                    if !self.reopen_capture(e, stop, heartbeat)? {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if frames == 0 {
                summary.finished = !stop.load(Ordering::Relaxed);
                break;
            }
            let timestamp = self.packetizer.next_timestamp();
            let mut due_ns = None;
            if let Some(pacer) = pacer.as_mut() {
                let deadline = pacer.next_deadline_ns();
                due_ns = Some(deadline);
                // Late: the loop comes straight back here and the packets
                // that fell due go out back to back.
                while monotonic_ns() < deadline && !stop.load(Ordering::Relaxed) {
                    crate::service::clock::sleep_until(deadline);
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                pacer.mark_sent();
            }
            let channels = usize::from(self.format.channels);
            let plain_len = self
                .packetizer
                .packetize(&self.samples[..frames * channels], &mut self.datagram);
            let len = plain_len;
            let len = match self.srtp.as_mut() {
                Some(srtp) => srtp.protect(&mut self.datagram, len).map_err(Error::Srtp)?,
                None => len,
            };
            if self.dest.send(&self.datagram[..len])? == SendStatus::Sent {
                summary.packets += 1;
            }
            summary.frames += frames as u64;
            if let Some(rtcp) = self.rtcp.as_mut() {
                // §6.4.1 counts payload octets: no header, no SRTP tag.
                rtcp.reporter
                    .count(plain_len.saturating_sub(crate::rtp::HEADER_LEN));
                let now = monotonic_ns();
                if rtcp.reporter.is_due(now) {
                    let wall = realtime_ns();
                    let media = self.media_clock(timestamp, due_ns, frames, now);
                    self.send_report(now, wall, media, false)?;
                }
            }
            last = Some((timestamp, due_ns, frames));
        }
        if let Some((timestamp, due_ns, frames)) = last.filter(|_| self.rtcp.is_some()) {
            let now = monotonic_ns();
            let wall = realtime_ns();
            let media = self.media_clock(timestamp, due_ns, frames, now);
            self.send_report(now, wall, media, true)?;
        }
        summary.dropped = self.dest.dropped();
        summary.overruns = self.overruns_before;
        if let Source::Capture { capture, .. } = &self.source {
            summary.overruns += capture.overruns();
        }
        Ok(summary)
    }

    /// The media clock at `now_ns` given the packet just sent: a paced
    /// file's packet leaves at its deadline (`due_ns`); a capture packet's
    /// last frame was read just now, so the clock stands past its end.
    fn media_clock(
        &self,
        timestamp: u32,
        due_ns: Option<u64>,
        frames: usize,
        now_ns: u64,
    ) -> (u32, u64) {
        match due_ns {
            Some(due) => report::media_clock_at(timestamp, due, now_ns, self.format.rate),
            None => (timestamp.wrapping_add(frames as u32), 0),
        }
    }

    /// Writes a report (with `bye`, the BYE too), protects it as SRTCP
    /// with a key, and sends it. A report that cannot be written (a buffer
    /// sized wrong) is skipped: RTCP never stops the audio.
    /// `media` is the media clock's frame and how long ago it passed it,
    /// read at `now_ns`, when the wall clock read `wall_ns`.
    fn send_report(
        &mut self,
        now_ns: u64,
        wall_ns: u64,
        media: (u32, u64),
        bye: bool,
    ) -> Result<(), Error> {
        let Some(rtcp) = self.rtcp.as_mut() else {
            return Ok(());
        };
        let Some(len) = rtcp.reporter.write(
            &mut rtcp.buf,
            now_ns,
            wall_ns.saturating_sub(media.1),
            media.0,
            bye,
        ) else {
            return Ok(());
        };
        let len = match self.srtp.as_mut() {
            Some(srtp) => srtp.protect_rtcp(&mut rtcp.buf, len).map_err(Error::Srtp)?,
            None => len,
        };
        let dest = rtcp.dest.as_mut().unwrap_or(&mut self.dest);
        dest.send(&rtcp.buf[..len])?;
        Ok(())
    }

    /// The capture device failed while streaming (unplugged, its sound
    /// server died): reopen it with backoff until it is back. The stream
    /// goes on with the same SSRC; the RTP timestamp skips the time the
    /// device was away and the next packet carries the marker bit (a new
    /// talkspurt), so a receiver does not mistake the gap for late audio.
    /// False when `stop` was set while waiting.
    fn reopen_capture(
        &mut self,
        err: AlsaError,
        stop: &AtomicBool,
        heartbeat: &Heartbeat,
    ) -> Result<bool, Error> {
        let Source::Capture {
            device,
            capture,
            want,
            period_frames,
        } = &mut self.source
        else {
            return Err(Error::Capture(err));
        };
        log::warn!("{err}; reopening it");
        let lost_at = monotonic_ns();
        let (device_name, want_format, period) = (device.clone(), *want, *period_frames);
        let Some(new) = retry_with_backoff(
            || Capture::open(&device_name, want_format, period),
            |_| true,
            FIRST_BACKOFF,
            stop,
            heartbeat,
        )?
        else {
            return Ok(false);
        };
        if new.format() != capture.format() {
            // The converter was built for the old format.
            return Err(Error::CaptureChanged {
                device: device_name,
                was: capture.format(),
                now: new.format(),
            });
        }
        self.overruns_before += capture.overruns();
        *capture = new;
        let gap_ns = monotonic_ns().saturating_sub(lost_at);
        let gap_frames = u128::from(gap_ns) * u128::from(self.format.rate) / 1_000_000_000;
        self.packetizer
            .skip_frames(u32::try_from(gap_frames).unwrap_or(u32::MAX));
        log::info!("'{device_name}' is back after {:.1} s", gap_ns as f64 / 1e9);
        Ok(true)
    }

    /// One packet of stream frames into `self.samples`; 0 at the end.
    fn fill(&mut self, stop: &AtomicBool) -> Result<usize, Error> {
        let Sender {
            source,
            converter,
            samples,
            overrun_log,
            ..
        } = self;
        match source {
            Source::File(file) => Ok(converter.fill(samples, |buf| file.read(buf, stop))?),
            Source::Capture {
                device,
                capture,
                period_frames,
                ..
            } => converter.fill(samples, |buf| loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok(0);
                }
                match capture.read(buf) {
                    Ok(capture::ReadStatus::Frames(0)) => continue,
                    Ok(capture::ReadStatus::Frames(n)) => return Ok(n),
                    Ok(capture::ReadStatus::Recovered) => {
                        if let Some(s) = overrun_log.check(monotonic_ns()) {
                            log::warn!(
                                "'{device}' overran (period {period_frames} frames), \
                                 restarted; {} overruns so far, {s} messages suppressed: the \
                                 system is overloaded",
                                capture.overruns()
                            );
                        }
                        continue;
                    }
                    Err(e) => return Err(Error::Capture(e)),
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_bitrate_counts_the_headers_of_every_packet() {
        // 50 packets/s × (20 IPv4 + 8 UDP + 12 RTP) bytes = 16 kbit/s.
        assert_eq!(codec_bitrate_bps(96_000, 960, false, 0), 80_000);
        // IPv6 headers are 20 bytes longer; an SRTP tag adds its own.
        assert_eq!(codec_bitrate_bps(96_000, 960, true, 0), 72_000);
        assert_eq!(codec_bitrate_bps(96_000, 960, false, 10), 76_000);
        // 60 ms packets: a third of the overhead.
        assert_eq!(codec_bitrate_bps(96_000, 2880, false, 0), 90_667);
        // Never below what libopus accepts.
        assert_eq!(codec_bitrate_bps(12_000, 240, false, 0), 6_000);
    }

    const SRC: StreamFormat = StreamFormat {
        encoding: Encoding::S16Le,
        rate: 44_100,
        channels: 2,
    };

    #[test]
    fn stream_format_defaults() {
        let l16 = Output::rtp(Encoding::L16, 96);
        assert_eq!(
            stream_format(l16, SRC, None, None),
            StreamFormat {
                encoding: Encoding::L16,
                rate: 44_100,
                channels: 2
            }
        );
        let pcmu = Output::rtp(Encoding::Pcmu, 96);
        assert_eq!(
            pcmu,
            Output::Rtp {
                encoding: Encoding::Pcmu,
                payload_type: 0
            }
        );
        assert_eq!(
            stream_format(pcmu, SRC, None, None),
            StreamFormat {
                encoding: Encoding::Pcmu,
                rate: 8000,
                channels: 1
            }
        );
        assert_eq!(
            stream_format(Output::Raw, SRC, None, None),
            StreamFormat::TUTORIAL
        );
        assert_eq!(
            stream_format(Output::Raw, SRC, Some(16_000), Some(2)).rate,
            16_000
        );
        assert_eq!(
            Output::rtp(Encoding::Pcma, 96),
            Output::Rtp {
                encoding: Encoding::Pcma,
                payload_type: 8
            }
        );
    }

    #[test]
    fn random_start_differs() {
        let a = random_start().unwrap();
        let b = random_start().unwrap();
        assert_ne!(a, b);
    }

    fn busy() -> AlsaError {
        AlsaError::Open {
            device: "hw:1".into(),
            stream: crate::alsa::Stream::Capture,
            errno: nix::libc::EBUSY,
        }
    }

    fn is_busy(e: &AlsaError) -> bool {
        e.is_busy()
    }

    #[test]
    fn busy_device_retried_with_backoff_until_free() {
        let stop = AtomicBool::new(false);
        let mut attempts = Vec::new();
        let t = std::time::Instant::now();
        let r = retry_with_backoff(
            || {
                attempts.push(t.elapsed());
                if attempts.len() < 3 {
                    Err(busy())
                } else {
                    Ok(attempts.len())
                }
            },
            is_busy,
            Duration::from_millis(20),
            &stop,
            &Heartbeat::new(),
        );
        assert!(matches!(r, Ok(Some(3))));
        // Waits of 20 ms then 40 ms: the backoff doubles.
        assert!(attempts[1] >= Duration::from_millis(20), "{attempts:?}");
        assert!(
            attempts[2] - attempts[1] >= Duration::from_millis(40),
            "{attempts:?}"
        );
    }

    #[test]
    fn other_open_errors_are_not_retried() {
        let stop = AtomicBool::new(false);
        let mut n = 0;
        let r: Result<Option<()>, _> = retry_with_backoff(
            || {
                n += 1;
                Err(AlsaError::DeviceLost {
                    device: "x".into(),
                    during: "read",
                    errno: nix::libc::EIO,
                })
            },
            is_busy,
            Duration::from_millis(1),
            &stop,
            &Heartbeat::new(),
        );
        assert!(matches!(r, Err(AlsaError::DeviceLost { .. })));
        assert_eq!(n, 1);
    }

    #[test]
    fn stop_ends_the_wait_for_a_busy_device() {
        let stop = AtomicBool::new(false);
        let r: Result<Option<()>, _> = retry_with_backoff(
            || {
                stop.store(true, Ordering::Relaxed);
                Err(busy())
            },
            is_busy,
            Duration::from_secs(60),
            &stop,
            &Heartbeat::new(),
        );
        assert!(matches!(r, Ok(None)));
    }
}
