//! Stream formats: what the bytes of a payload mean (encoding, rate,
//! channels), the `--raw` and `--rtp-format` option parsers, and the RTP
//! payload-type table (static types 0, 8, 10, 11 plus dynamic ones declared
//! on the command line). Pure data; no I/O.

use core::fmt;

/// Highest channel count a stream may declare; sizes per-frame scratch space.
pub const MAX_CHANNELS: u16 = 8;
/// Sample-rate range accepted for streams and devices.
pub const MIN_RATE: u32 = 8_000;
pub const MAX_RATE: u32 = 192_000;

/// How samples are encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// 16-bit signed, network (big-endian) byte order: RTP L16 (RFC 3551).
    L16,
    /// 16-bit signed little-endian: headerless PCM as the tutorial sends it.
    S16Le,
    /// G.711 mu-law (RTP PCMU).
    Pcmu,
    /// G.711 A-law (RTP PCMA).
    Pcma,
    /// Opus (RFC 7587): variable-length packets, the frame count in the
    /// TOC byte, always a 48 kHz RTP clock; decoded by `audio::opus`.
    Opus,
}

impl Encoding {
    /// Bytes per sample of the fixed-size encodings; 0 for Opus, whose
    /// packets say their own length in frames.
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::L16 | Encoding::S16Le => 2,
            Encoding::Pcmu | Encoding::Pcma => 1,
            Encoding::Opus => 0,
        }
    }

    /// The encoding name as RTP/SDP spell it (`a=rtpmap`).
    pub const fn rtp_name(self) -> &'static str {
        match self {
            Encoding::L16 | Encoding::S16Le => "L16",
            Encoding::Pcmu => "PCMU",
            Encoding::Pcma => "PCMA",
            Encoding::Opus => "opus",
        }
    }

    /// The name used by `--raw` and `--format`.
    pub const fn raw_name(self) -> &'static str {
        match self {
            Encoding::L16 => "s16be",
            Encoding::S16Le => "s16le",
            Encoding::Pcmu => "ulaw",
            Encoding::Pcma => "alaw",
            Encoding::Opus => "opus",
        }
    }
}

/// Encoding, sample rate and channel count of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamFormat {
    pub encoding: Encoding,
    /// Frames per second (RTP clock rate for the audio formats we carry).
    pub rate: u32,
    pub channels: u16,
}

impl StreamFormat {
    /// The tutorial's stream: 8 kHz, 16-bit little-endian, mono.
    pub const TUTORIAL: StreamFormat = StreamFormat {
        encoding: Encoding::S16Le,
        rate: 8000,
        channels: 1,
    };

    pub const fn bytes_per_frame(&self) -> usize {
        self.encoding.bytes_per_sample() * self.channels as usize
    }

    /// Frames in a payload of `len` bytes, or `None` when it is not a whole
    /// number of frames (a malformed packet).
    pub const fn whole_frames(&self, len: usize) -> Option<usize> {
        let bpf = self.bytes_per_frame();
        if bpf == 0 || len % bpf != 0 {
            None
        } else {
            Some(len / bpf)
        }
    }

    /// Frames in `ms` milliseconds at this rate (rounded down).
    pub const fn frames_for_ms(&self, ms: u32) -> usize {
        (self.rate as u64 * ms as u64 / 1000) as usize
    }
}

impl fmt::Display for StreamFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.encoding {
            Encoding::S16Le => "s16le",
            e => e.rtp_name(),
        };
        write!(f, "{}/{}/{}", name, self.rate, self.channels)
    }
}

/// A `--raw` or `--rtp-format` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Not of the form the option takes; carries the whole value.
    Syntax {
        value: String,
        expected: &'static str,
    },
    UnknownEncoding(String),
    Rate(String),
    Channels(String),
    PayloadType(String),
    /// Opus on RTP: the rate must be 48000 and the channels 1 or 2.
    Opus(String),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::Syntax { value, expected } => {
                write!(f, "'{value}' is not of the form {expected}")
            }
            FormatError::UnknownEncoding(e) => write!(
                f,
                "unknown sample format '{e}': use s16le, s16be (L16), ulaw (PCMU), alaw (PCMA) \
                 or (RTP only) OPUS"
            ),
            FormatError::Rate(r) => write!(
                f,
                "sample rate '{r}' is not a whole number from {MIN_RATE} to {MAX_RATE}"
            ),
            FormatError::Channels(c) => write!(
                f,
                "channel count '{c}' is not a whole number from 1 to {MAX_CHANNELS}"
            ),
            FormatError::Opus(v) => write!(
                f,
                "'{v}': Opus on RTP is OPUS/48000/2 (stereo) or OPUS/48000/1 (mono); \
                 the RTP clock is 48 kHz whatever the audio bandwidth"
            ),
            FormatError::PayloadType(p) => write!(
                f,
                "payload type '{p}' is not a dynamic RTP payload type (96 to 127)"
            ),
        }
    }
}

impl std::error::Error for FormatError {}

fn parse_encoding(name: &str) -> Result<Encoding, FormatError> {
    match name.to_ascii_lowercase().as_str() {
        "s16le" => Ok(Encoding::S16Le),
        "s16be" | "l16" => Ok(Encoding::L16),
        "ulaw" | "mulaw" | "pcmu" | "mu-law" => Ok(Encoding::Pcmu),
        "alaw" | "pcma" | "a-law" => Ok(Encoding::Pcma),
        "opus" => Ok(Encoding::Opus),
        _ => Err(FormatError::UnknownEncoding(name.to_string())),
    }
}

fn parse_rate(s: &str) -> Result<u32, FormatError> {
    match s.parse::<u32>() {
        Ok(r) if (MIN_RATE..=MAX_RATE).contains(&r) => Ok(r),
        _ => Err(FormatError::Rate(s.to_string())),
    }
}

fn parse_channels(s: &str) -> Result<u16, FormatError> {
    match s.parse::<u16>() {
        Ok(c) if (1..=MAX_CHANNELS).contains(&c) => Ok(c),
        _ => Err(FormatError::Channels(s.to_string())),
    }
}

/// Parses `FORMAT:RATE:CHANNELS` as `--raw` and the sender's `--format`
/// take it, e.g. `s16le:8000:1` (the tutorial's stream).
pub fn parse_raw(value: &str) -> Result<StreamFormat, FormatError> {
    let mut parts = value.split(':');
    let (Some(enc), Some(rate), Some(ch), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(FormatError::Syntax {
            value: value.to_string(),
            expected: "FORMAT:RATE:CHANNELS (e.g. s16le:8000:1)",
        });
    };
    let encoding = match parse_encoding(enc)? {
        // Opus packets need RTP framing: headerless PCM only.
        Encoding::Opus => return Err(FormatError::UnknownEncoding(enc.to_string())),
        e => e,
    };
    Ok(StreamFormat {
        encoding,
        rate: parse_rate(rate)?,
        channels: parse_channels(ch)?,
    })
}

/// Parses `PT=ENCODING/RATE[/CHANNELS]` as `--rtp-format` takes it, e.g.
/// `96=L16/48000/2` (the `a=rtpmap` spelling of SDP).
pub fn parse_rtp_format(value: &str) -> Result<(u8, StreamFormat), FormatError> {
    let syntax = || FormatError::Syntax {
        value: value.to_string(),
        expected: "PT=ENCODING/RATE[/CHANNELS] (e.g. 96=L16/48000/2)",
    };
    let (pt, map) = value.split_once('=').ok_or_else(syntax)?;
    let pt = match pt.trim().parse::<u8>() {
        Ok(p) if (96..=127).contains(&p) => p,
        _ => return Err(FormatError::PayloadType(pt.to_string())),
    };
    let mut parts = map.split('/');
    let enc = parts.next().ok_or_else(syntax)?;
    let rate = parts.next().ok_or_else(syntax)?;
    let channels = parts.next().map(parse_channels).transpose()?.unwrap_or(1);
    if parts.next().is_some() {
        return Err(syntax());
    }
    let encoding = match parse_encoding(enc)? {
        // On RTP, L16 is always network byte order.
        Encoding::S16Le => return Err(FormatError::UnknownEncoding(enc.to_string())),
        e => e,
    };
    let rate = parse_rate(rate)?;
    if encoding == Encoding::Opus && (rate != 48_000 || channels > 2) {
        return Err(FormatError::Opus(map.to_string()));
    }
    Ok((
        pt,
        StreamFormat {
            encoding,
            rate,
            channels,
        },
    ))
}

/// RTP payload type → stream format, for the static types of RFC 3551 that
/// carry audio we play, plus dynamic ones from `--rtp-format`.
#[derive(Clone, Debug)]
pub struct PayloadMap {
    formats: [Option<StreamFormat>; 128],
}

impl Default for PayloadMap {
    fn default() -> Self {
        let mut formats = [None; 128];
        let g711 = |encoding| StreamFormat {
            encoding,
            rate: 8000,
            channels: 1,
        };
        formats[0] = Some(g711(Encoding::Pcmu));
        formats[8] = Some(g711(Encoding::Pcma));
        formats[10] = Some(StreamFormat {
            encoding: Encoding::L16,
            rate: 44_100,
            channels: 2,
        });
        formats[11] = Some(StreamFormat {
            encoding: Encoding::L16,
            rate: 44_100,
            channels: 1,
        });
        PayloadMap { formats }
    }
}

impl PayloadMap {
    pub fn set(&mut self, payload_type: u8, format: StreamFormat) {
        if let Some(slot) = self.formats.get_mut(payload_type as usize) {
            *slot = Some(format);
        }
    }

    pub fn get(&self, payload_type: u8) -> Option<StreamFormat> {
        self.formats.get(payload_type as usize).copied().flatten()
    }

    /// Every (rate, channels) a mapped type can carry, each once: the
    /// receiver builds a resampler for each at start-up.
    pub fn rates_channels(&self) -> Vec<(u32, u16)> {
        let mut all: Vec<(u32, u16)> = Vec::new();
        for f in self.formats.iter().flatten() {
            if !all.contains(&(f.rate, f.channels)) {
                all.push((f.rate, f.channels));
            }
        }
        all
    }

    /// Whether a mapped type is Opus: the receiver then makes its decoder
    /// and packet store at start-up.
    pub fn has_opus(&self) -> bool {
        self.formats
            .iter()
            .flatten()
            .any(|f| f.encoding == Encoding::Opus)
    }

    /// The highest rate and channel count any mapped type can carry; sizes
    /// the jitter buffer and playout scratch space at startup.
    pub fn max_rate_channels(&self) -> (u32, u16) {
        self.formats
            .iter()
            .flatten()
            .fold((0, 0), |(r, c), f| (r.max(f.rate), c.max(f.channels)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tutorial_raw_format() {
        assert_eq!(parse_raw("s16le:8000:1"), Ok(StreamFormat::TUTORIAL));
        assert_eq!(StreamFormat::TUTORIAL.whole_frames(320), Some(160));
        assert_eq!(StreamFormat::TUTORIAL.whole_frames(321), None);
    }

    #[test]
    fn raw_format_errors() {
        assert!(matches!(
            parse_raw("s16le:8000"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(matches!(
            parse_raw("s16le:8000:1:2"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(matches!(
            parse_raw("f32:8000:1"),
            Err(FormatError::UnknownEncoding(_))
        ));
        assert!(matches!(
            parse_raw("s16le:100:1"),
            Err(FormatError::Rate(_))
        ));
        assert!(matches!(
            parse_raw("s16le:8000:0"),
            Err(FormatError::Channels(_))
        ));
        assert!(matches!(
            parse_raw("s16le:8000:9"),
            Err(FormatError::Channels(_))
        ));
        assert_eq!(
            parse_raw("ULAW:16000:2").map(|f| f.encoding),
            Ok(Encoding::Pcmu)
        );
    }

    #[test]
    fn rtp_format_option() {
        let (pt, f) = parse_rtp_format("96=L16/48000/2").unwrap();
        assert_eq!(pt, 96);
        assert_eq!(
            f,
            StreamFormat {
                encoding: Encoding::L16,
                rate: 48000,
                channels: 2
            }
        );
        assert_eq!(parse_rtp_format("100=PCMA/16000").unwrap().1.channels, 1);
        assert!(matches!(
            parse_rtp_format("95=L16/48000/2"),
            Err(FormatError::PayloadType(_))
        ));
        assert!(matches!(
            parse_rtp_format("96:L16/48000"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(matches!(
            parse_rtp_format("96=L16"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(matches!(
            parse_rtp_format("96=s16le/48000"),
            Err(FormatError::UnknownEncoding(_))
        ));
    }

    #[test]
    fn opus_rtp_format_as_ffmpeg_announces_it() {
        let (pt, f) = parse_rtp_format("97=OPUS/48000/2").unwrap();
        assert_eq!(
            (pt, f.encoding, f.rate, f.channels),
            (97, Encoding::Opus, 48_000, 2)
        );
        assert_eq!(parse_rtp_format("97=opus/48000").unwrap().1.channels, 1);
        assert!(matches!(
            parse_rtp_format("97=OPUS/16000/1"),
            Err(FormatError::Opus(_))
        ));
        assert!(matches!(
            parse_rtp_format("97=OPUS/48000/6"),
            Err(FormatError::Opus(_))
        ));
        assert!(matches!(
            parse_raw("opus:48000:2"),
            Err(FormatError::UnknownEncoding(_))
        ));
        let mut m = PayloadMap::default();
        assert!(!m.has_opus());
        m.set(97, parse_rtp_format("97=OPUS/48000/2").unwrap().1);
        assert!(m.has_opus());
    }

    #[test]
    fn static_payload_types() {
        let m = PayloadMap::default();
        assert_eq!(m.get(0).map(|f| f.encoding), Some(Encoding::Pcmu));
        assert_eq!(m.get(8).map(|f| f.encoding), Some(Encoding::Pcma));
        assert_eq!(m.get(10).map(|f| f.channels), Some(2));
        assert_eq!(m.get(11).map(|f| f.rate), Some(44_100));
        assert_eq!(m.get(96), None);
        assert_eq!(m.get(200), None);
    }
}
