//! The sender's stages: source (WAV, raw, stdin, ALSA capture) → convert
//! (rate, channels) → packetize (RTP or headerless) → pace (absolute
//! deadline on the monotonic clock) → socket; and the SDP description.
//! `Sender` wires them: a file or standard input is paced by the monotonic
//! clock (packet k leaves at start + k · ptime), a capture device by its
//! own clock (each blocking read of one ptime of audio is one packet).
//! Everything is opened and sized in `Sender::new`; `run` allocates
//! nothing.

pub mod capture;
pub mod convert;
pub mod dest;
pub mod pace;
pub mod packetize;
pub mod sdp;
pub mod source;
pub mod wav;

use core::fmt;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::clock::monotonic_ns;
use crate::format::{Encoding, StreamFormat, MAX_CHANNELS, MAX_RATE, MIN_RATE};
use crate::ratelimit::RateLimit;
use capture::Capture;
use convert::Converter;
use dest::{Dest, DestConfig, SendStatus};
use pace::Pacer;
use packetize::{Framing, Packetizer, PacketizerConfig};
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
            Encoding::L16 | Encoding::S16Le => dynamic_payload_type,
        };
        Output::Rtp {
            encoding,
            payload_type,
        }
    }
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
}

#[derive(Debug)]
pub enum Error {
    Source(source::Error),
    Capture(capture::Error),
    Convert(convert::Error),
    Packetize(packetize::Error),
    Dest(dest::Error),
    Sdp {
        path: PathBuf,
        err: io::Error,
    },
    /// `--sdp` with `--raw`: SDP describes RTP sessions only.
    SdpRaw,
    Ptime(u32),
    Rate(u32),
    Channels(u16),
    Random(io::Error),
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
            Error::SdpRaw => write!(
                f,
                "--sdp describes an RTP stream; headerless --raw has none: drop one of them"
            ),
            Error::Ptime(p) => write!(f, "--ptime {p} is outside 1 to 200 ms"),
            Error::Rate(r) => write!(f, "--rate {r} is outside {MIN_RATE} to {MAX_RATE}"),
            Error::Channels(c) => write!(f, "--channels {c} is outside 1 to {MAX_CHANNELS}"),
            Error::Random(e) => write!(f, "cannot read /dev/urandom: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<source::Error> for Error {
    fn from(e: source::Error) -> Self {
        Error::Source(e)
    }
}
impl From<capture::Error> for Error {
    fn from(e: capture::Error) -> Self {
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
        Output::Rtp { encoding, .. } => (encoding, 8000, 1),
        Output::Raw => (Encoding::S16Le, 8000, 1),
    };
    StreamFormat {
        encoding,
        rate: rate.unwrap_or(default_rate),
        channels: channels.unwrap_or(default_channels),
    }
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
        period_frames: usize,
    },
}

/// Sleeps `d` in small steps, returning early when `stop` is set.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

/// Opens a capture device, retrying with backoff (0.5 s doubling to 8 s)
/// while it is busy, until `stop` is set.
pub fn open_capture_with_retry(
    device: &str,
    want: StreamFormat,
    period_frames: usize,
    stop: &AtomicBool,
) -> Result<Option<Capture>, capture::Error> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match Capture::open(device, want, period_frames) {
            Ok(c) => return Ok(Some(c)),
            Err(e @ capture::Error::Busy { .. }) => {
                log::warn!("{e}; retrying in {:.1} s", backoff.as_secs_f32());
                sleep_unless_stopped(backoff, stop);
                if stop.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                backoff = (backoff * 2).min(Duration::from_secs(8));
            }
            Err(e) => return Err(e),
        }
    }
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
    overrun_log: RateLimit,
}

impl Sender {
    /// Opens the source, the socket and (for `--sdp`) writes the SDP file.
    /// Returns `None` when `stop` was set while waiting for a busy device.
    pub fn new(config: &SendConfig, stop: &AtomicBool) -> Result<Option<Sender>, Error> {
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
                let Some(capture) = open_capture_with_retry(device, format, period, stop)? else {
                    return Ok(None);
                };
                let src = capture.format();
                let format = stream_format(config.output, src, config.rate, config.channels);
                let source = Source::Capture {
                    device: device.clone(),
                    period_frames: capture.period_frames(),
                    capture,
                };
                (source, src, format)
            }
        };
        let frames_per_packet = format.frames_for_ms(config.ptime_ms);
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
        let packetizer = Packetizer::new(&PacketizerConfig {
            format,
            framing,
            frames_per_packet,
            ssrc,
            first_seq,
            first_timestamp,
        })
        .map_err(Error::Packetize)?;
        let dest = Dest::open(&config.dest)?;
        if let (Some(path), Framing::Rtp { payload_type }) = (&config.sdp, framing) {
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
                ttl: config.dest.ttl,
                session_id: u64::from(ssrc),
            });
            std::fs::write(path, text).map_err(|err| Error::Sdp {
                path: path.clone(),
                err,
            })?;
        }
        log::info!(
            "send: {} from {} Hz/{} ch to {} as {}, {} frames per packet, SSRC {:08x}",
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
        Ok(Some(Sender {
            source,
            converter,
            datagram: vec![0; packetizer.max_datagram_len()],
            packetizer,
            dest,
            format,
            frames_per_packet,
            samples: vec![0; frames_per_packet * usize::from(format.channels)],
            overrun_log: RateLimit::default_for_input(),
        }))
    }

    /// The stream's format on the wire.
    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Streams until the source ends or `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<Summary, Error> {
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
        while !stop.load(Ordering::Relaxed) {
            let frames = self.fill(stop)?;
            if frames == 0 {
                summary.finished = !stop.load(Ordering::Relaxed);
                break;
            }
            if let Some(pacer) = pacer.as_mut() {
                let deadline = pacer.next_deadline_ns();
                // Late: the loop comes straight back here and the packets
                // that fell due go out back to back.
                while monotonic_ns() < deadline && !stop.load(Ordering::Relaxed) {
                    pace::sleep_until(deadline);
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                pacer.mark_sent();
            }
            let channels = usize::from(self.format.channels);
            let len = self
                .packetizer
                .packetize(&self.samples[..frames * channels], &mut self.datagram);
            if self.dest.send(&self.datagram[..len])? == SendStatus::Sent {
                summary.packets += 1;
            }
            summary.frames += frames as u64;
        }
        summary.dropped = self.dest.dropped();
        if let Source::Capture { capture, .. } = &self.source {
            summary.overruns = capture.overruns();
        }
        Ok(summary)
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
            Source::File(file) => Ok(converter.fill(samples, |buf| file.read(buf))?),
            Source::Capture {
                device,
                capture,
                period_frames,
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
                                "capture: '{device}' overran (period {period_frames} frames), \
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
}
