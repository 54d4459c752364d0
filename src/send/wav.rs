//! WAV header parser. Input: the first bytes of a RIFF/WAVE stream (a file
//! or standard input). Output: the stream format (16-bit PCM, any rate and
//! channel count) and where the samples are. Policy: chunks other than
//! `fmt ` and `data` are skipped (odd sizes padded as RIFF requires);
//! anything but 16-bit integer PCM (float, 24-bit, compressed) is refused
//! with a clear error, as is a header that ends early. A `data` size of 0
//! or 0xFFFFFFFF (written by programs that stream WAV to a pipe) means
//! "until the end of the input".

use core::fmt;
use std::io::{self, Read};

use crate::audio::format::{Encoding, StreamFormat, MAX_CHANNELS, MAX_RATE, MIN_RATE};

const WAVE_FORMAT_PCM: u16 = 0x0001;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 0x0003;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavInfo {
    /// The samples' format; the encoding is always s16le.
    pub format: StreamFormat,
    /// Offset of the first sample from the start of the stream.
    pub data_offset: u64,
    /// Bytes of samples, `None` when the header leaves it open.
    pub data_len: Option<u64>,
}

#[derive(Debug)]
pub enum Error {
    NotWav,
    /// The input ended inside the header.
    Truncated,
    NoFormat,
    /// A sample format we do not read; carries a name for the user.
    Unsupported(String),
    Rate(u32),
    Channels(u16),
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotWav => write!(
                f,
                "not a WAV file (no RIFF/WAVE header): for raw PCM give --format s16le:RATE:CHANNELS"
            ),
            Error::Truncated => write!(f, "the WAV file ends inside its header: it is truncated"),
            Error::NoFormat => write!(f, "the WAV file has no 'fmt ' chunk before its data"),
            Error::Unsupported(what) => write!(
                f,
                "the WAV file holds {what}; only 16-bit integer PCM is supported: convert it, \
                 e.g. sox IN.wav -b 16 -e signed-integer OUT.wav"
            ),
            Error::Rate(r) => write!(
                f,
                "the WAV file's sample rate {r} Hz is outside {MIN_RATE} to {MAX_RATE}"
            ),
            Error::Channels(c) => write!(
                f,
                "the WAV file has {c} channels; at most {MAX_CHANNELS} are supported"
            ),
            Error::Io(e) => write!(f, "reading the WAV header failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), Error> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated,
        _ => Error::Io(e),
    })
}

fn skip<R: Read>(r: &mut R, n: u64) -> Result<(), Error> {
    let copied = io::copy(&mut r.by_ref().take(n), &mut io::sink()).map_err(Error::Io)?;
    if copied < n {
        return Err(Error::Truncated);
    }
    Ok(())
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Reads the header from `r`, leaving `r` at the first sample.
pub fn read_header<R: Read>(r: &mut R) -> Result<WavInfo, Error> {
    let mut riff = [0u8; 12];
    match r.read_exact(&mut riff) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(Error::NotWav),
        Err(e) => return Err(Error::Io(e)),
    }
    if &riff[0..4] != b"RIFF" || &riff[8..12] != b"WAVE" {
        return Err(Error::NotWav);
    }
    let mut offset = 12u64;
    let mut format: Option<StreamFormat> = None;
    loop {
        let mut chunk = [0u8; 8];
        read_full(r, &mut chunk)?;
        offset += 8;
        let size = u32_at(&chunk, 4);
        match &chunk[0..4] {
            b"fmt " => {
                if !(16..=1024).contains(&size) {
                    return Err(Error::Unsupported(format!(
                        "a 'fmt ' chunk of {size} bytes"
                    )));
                }
                let mut fmt = [0u8; 1024];
                let body = &mut fmt[..size as usize];
                read_full(r, body)?;
                format = Some(parse_fmt(body)?);
                let pad = u64::from(size & 1);
                skip(r, pad)?;
                offset += u64::from(size) + pad;
            }
            b"data" => {
                let Some(format) = format else {
                    return Err(Error::NoFormat);
                };
                let data_len = match size {
                    0 | u32::MAX => None,
                    n => Some(u64::from(n)),
                };
                return Ok(WavInfo {
                    format,
                    data_offset: offset,
                    data_len,
                });
            }
            _ => {
                // RIFF chunks are padded to an even size.
                let n = u64::from(size) + u64::from(size & 1);
                skip(r, n)?;
                offset += n;
            }
        }
    }
}

fn parse_fmt(b: &[u8]) -> Result<StreamFormat, Error> {
    let mut tag = u16_at(b, 0);
    let channels = u16_at(b, 2);
    let rate = u32_at(b, 4);
    let bits = u16_at(b, 14);
    if tag == WAVE_FORMAT_EXTENSIBLE {
        // cbSize(2) validBits(2) channelMask(4) then the sub-format GUID,
        // whose first two bytes are the real format tag.
        if b.len() < 40 {
            return Err(Error::Unsupported(
                "a short WAVE_FORMAT_EXTENSIBLE header".into(),
            ));
        }
        tag = u16_at(b, 24);
        let valid_bits = u16_at(b, 18);
        if valid_bits != 0 && valid_bits != 16 {
            return Err(Error::Unsupported(format!("{valid_bits}-bit samples")));
        }
    }
    match tag {
        WAVE_FORMAT_PCM => {}
        WAVE_FORMAT_IEEE_FLOAT => {
            return Err(Error::Unsupported(format!(
                "{bits}-bit floating-point samples"
            )))
        }
        t => {
            return Err(Error::Unsupported(format!(
                "compressed audio (format tag {t:#06x})"
            )))
        }
    }
    if bits != 16 {
        return Err(Error::Unsupported(format!("{bits}-bit samples")));
    }
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(Error::Rate(rate));
    }
    if !(1..=MAX_CHANNELS).contains(&channels) {
        return Err(Error::Channels(channels));
    }
    Ok(StreamFormat {
        encoding: Encoding::S16Le,
        rate,
        channels,
    })
}

/// Builds a 16-bit PCM WAV file in memory (tests and the test suite's
/// signals).
pub fn write_wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut v = Vec::with_capacity(44 + samples.len() * 2);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&WAVE_FORMAT_PCM.to_le_bytes());
    v.extend_from_slice(&channels.to_le_bytes());
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    v.extend_from_slice(&(channels * 2).to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<WavInfo, Error> {
        read_header(&mut &bytes[..])
    }

    #[test]
    fn valid_mono_and_stereo() {
        let w = write_wav(8000, 1, &[1, 2, 3]);
        let info = parse(&w).unwrap();
        assert_eq!(info.format, StreamFormat::TUTORIAL);
        assert_eq!(info.data_offset, 44);
        assert_eq!(info.data_len, Some(6));
        let w = write_wav(48_000, 2, &[1, 2, 3, 4]);
        let mut r = &w[..];
        let info = read_header(&mut r).unwrap();
        assert_eq!((info.format.rate, info.format.channels), (48_000, 2));
        assert_eq!(info.data_len, Some(8));
        // The reader is left at the first sample.
        assert_eq!(r, &[1, 0, 2, 0, 3, 0, 4, 0]);
    }

    /// A LIST chunk of odd size (padded) between fmt and data, as many
    /// editors write, is skipped.
    #[test]
    fn odd_chunk_skipped() {
        let w = write_wav(16_000, 1, &[7, 8]);
        let mut v = w[..36].to_vec();
        v.extend_from_slice(b"LIST");
        v.extend_from_slice(&5u32.to_le_bytes());
        v.extend_from_slice(b"abcde\0");
        v.extend_from_slice(&w[36..]);
        let mut r = &v[..];
        let info = read_header(&mut r).unwrap();
        assert_eq!(info.format.rate, 16_000);
        assert_eq!(info.data_offset, 44 + 14);
        assert_eq!(r, &[7, 0, 8, 0]);
    }

    fn extensible(sub_tag: u16, bits: u16, valid: u16) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"RIFF\0\0\0\0WAVEfmt ");
        v.extend_from_slice(&40u32.to_le_bytes());
        v.extend_from_slice(&WAVE_FORMAT_EXTENSIBLE.to_le_bytes());
        v.extend_from_slice(&2u16.to_le_bytes());
        v.extend_from_slice(&44_100u32.to_le_bytes());
        v.extend_from_slice(&(44_100u32 * 2 * u32::from(bits / 8)).to_le_bytes());
        v.extend_from_slice(&(2 * bits / 8).to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v.extend_from_slice(&22u16.to_le_bytes());
        v.extend_from_slice(&valid.to_le_bytes());
        v.extend_from_slice(&3u32.to_le_bytes());
        v.extend_from_slice(&sub_tag.to_le_bytes());
        v.extend_from_slice(&[0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71]);
        v.extend_from_slice(b"data");
        v.extend_from_slice(&u32::MAX.to_le_bytes());
        v
    }

    #[test]
    fn extensible_pcm_accepted_open_length() {
        let info = parse(&extensible(1, 16, 16)).unwrap();
        assert_eq!((info.format.rate, info.format.channels), (44_100, 2));
        assert_eq!(info.data_offset, 12 + 8 + 40 + 8);
        assert_eq!(info.data_len, None);
    }

    #[test]
    fn float_rejected() {
        let mut w = write_wav(48_000, 1, &[0, 0]);
        w[20..22].copy_from_slice(&WAVE_FORMAT_IEEE_FLOAT.to_le_bytes());
        w[34..36].copy_from_slice(&32u16.to_le_bytes());
        let e = parse(&w).unwrap_err();
        assert!(e.to_string().contains("32-bit floating-point"), "{e}");
        assert!(matches!(
            parse(&extensible(3, 32, 32)),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn other_depths_and_compressed_rejected() {
        assert!(matches!(
            parse(&extensible(1, 24, 24)),
            Err(Error::Unsupported(_))
        ));
        let mut w = write_wav(48_000, 1, &[0]);
        w[34..36].copy_from_slice(&24u16.to_le_bytes());
        assert!(matches!(parse(&w), Err(Error::Unsupported(s)) if s.contains("24-bit")));
        let mut w = write_wav(8000, 1, &[0]);
        w[20..22].copy_from_slice(&0x0006u16.to_le_bytes()); // A-law WAV
        assert!(matches!(parse(&w), Err(Error::Unsupported(s)) if s.contains("compressed")));
    }

    #[test]
    fn truncated_header() {
        let w = write_wav(8000, 1, &[1, 2]);
        for cut in [12, 20, 30, 40] {
            assert!(
                matches!(parse(&w[..cut]), Err(Error::Truncated)),
                "cut {cut}"
            );
        }
        assert!(matches!(parse(&w[..6]), Err(Error::NotWav)));
        assert!(matches!(parse(b"RIFX\0\0\0\0WAVE"), Err(Error::NotWav)));
    }

    #[test]
    fn data_before_fmt_rejected() {
        let v = b"RIFF\0\0\0\0WAVEdata\x02\0\0\0\x01\x00";
        assert!(matches!(parse(v), Err(Error::NoFormat)));
    }

    #[test]
    fn bad_rate_and_channels() {
        let w = write_wav(4000, 1, &[0]);
        assert!(matches!(parse(&w), Err(Error::Rate(4000))));
        let w = write_wav(8000, 9, &[0]);
        assert!(matches!(parse(&w), Err(Error::Channels(9))));
    }
}
