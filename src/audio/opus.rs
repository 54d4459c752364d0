//! Opus (RFC 6716) as RTP carries it (RFC 7587), through libopus (the
//! `opus` crate): a decoder for the receiver and an encoder for the sender.
//!
//! On RTP the clock is always 48 kHz whatever the encoder's bandwidth, and
//! a packet holds 2.5 to 120 ms (its TOC byte says how much). The stream is
//! mono or stereo (`sprop-stereo`); the decoder here always decodes at
//! 48 kHz to the stream's channel count.
//!
//! Unlike L16 and G.711, an Opus decoder has state: packets must be decoded
//! in order, and a lost packet must be told to it, either as concealment
//! (`conceal`, the decoder's own PLC) or, when the packet after the hole
//! has arrived, as a decode of that packet's in-band FEC copy of the lost
//! frame (`recover`, RFC 7587 section 3.2; only SILK and hybrid packets
//! carry one, and only when their encoder had FEC on). The jitter buffer
//! therefore stores Opus payloads encoded and decodes them when it reads.
//!
//! Both decoders (mono, stereo) and the encoder are created at start-up;
//! decoding and encoding write into the caller's slices and never allocate.

use core::fmt;

/// The RTP clock and decoding rate of every Opus stream (RFC 7587).
pub const RATE: u32 = 48_000;
/// The shortest Opus frame, 2.5 ms at 48 kHz: every duration the decoder
/// is asked to conceal or recover is a multiple of it.
pub const MIN_FRAME: usize = 120;
/// The most frames one packet can hold: 120 ms at 48 kHz.
pub const MAX_PACKET_FRAMES: usize = 5760;
/// Largest encoded packet: one Ethernet datagram's worth. The sender gives
/// the encoder no more room (libopus then lowers the bitrate of that
/// packet), the receiver stores no more: 20 ms at Opus's highest rate
/// (510 kbit/s) is 1275 bytes.
pub const MAX_PACKET_BYTES: usize = 1500;

/// An Opus failure; names what was asked and libopus's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpusError {
    /// Creating a decoder or encoder failed (out of memory, bad arguments).
    Create { what: &'static str, error: String },
    /// Opus carries one or two channels per RTP stream (RFC 7587).
    Channels(u16),
    /// `--bitrate` out of libopus's range.
    Bitrate(u32),
    /// `--expected-loss` out of 0..=100.
    ExpectedLoss(u8),
    /// The frame length is not one Opus encodes (2.5, 5, 10, 20, 40, 60 ms).
    FrameLength(usize),
    /// A setting was refused by libopus.
    Setting { what: &'static str, error: String },
    /// A packet did not decode (corrupt), or samples did not encode.
    Codec(opus::ErrorCode),
}

impl fmt::Display for OpusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpusError::Create { what, error } => write!(f, "creating the Opus {what}: {error}"),
            OpusError::Channels(c) => write!(
                f,
                "Opus on RTP carries 1 or 2 channels, not {c}: use OPUS/48000/1 or OPUS/48000/2"
            ),
            OpusError::Bitrate(b) => write!(
                f,
                "Opus bitrate {b} bit/s is out of range: use 6k to 510k (e.g. --bitrate 96k)"
            ),
            OpusError::ExpectedLoss(p) => {
                write!(f, "expected loss {p} % is out of range: use 0 to 100")
            }
            OpusError::FrameLength(n) => write!(
                f,
                "{n} frames at 48 kHz is not an Opus frame: use 2.5, 5, 10, 20, 40 or 60 ms"
            ),
            OpusError::Setting { what, error } => write!(f, "Opus encoder refused {what}: {error}"),
            OpusError::Codec(code) => write!(f, "libopus: {}", code.description()),
        }
    }
}

impl std::error::Error for OpusError {}

fn opus_channels(channels: u16) -> Result<opus::Channels, OpusError> {
    match channels {
        1 => Ok(opus::Channels::Mono),
        2 => Ok(opus::Channels::Stereo),
        c => Err(OpusError::Channels(c)),
    }
}

/// Frames (per channel, at 48 kHz) in an Opus packet, from its TOC byte
/// (RFC 6716 section 3.1); `None` when the packet is malformed or longer
/// than 120 ms. An empty payload holds no frames.
pub fn packet_frames(payload: &[u8]) -> Option<usize> {
    if payload.is_empty() {
        return Some(0);
    }
    match opus::packet::get_nb_samples(payload, RATE) {
        Ok(n) if n <= MAX_PACKET_FRAMES => Some(n),
        _ => None,
    }
}

/// Whether a packet can carry in-band FEC: SILK-only and hybrid packets
/// (TOC configurations 0 to 15) can; CELT-only ones cannot.
pub fn can_carry_fec(payload: &[u8]) -> bool {
    payload.first().is_some_and(|toc| toc >> 3 < 16)
}

/// Whether a packet carries in-band FEC for the frame before it: the LBRR
/// flag of its first SILK frame (RFC 6716 section 4.2.4), of either
/// channel. `can_carry_fec` only tells that the mode allows it; a SILK or
/// hybrid packet of an encoder without FEC (or in a frame it judged not
/// worth protecting) has the flag clear. libopus 1.5 has
/// `opus_packet_has_lbrr` for this; Debian 12 ships 1.3, hence this
/// reading of the few range-coded header bits.
pub fn carries_fec(payload: &[u8]) -> bool {
    let Some(&toc) = payload.first() else {
        return false;
    };
    let config = toc >> 3;
    if config >= 16 {
        return false;
    }
    // The first frame's bytes: codes 0 and 1 start right after the TOC,
    // code 2 after its first frame's length (1 or 2 bytes), code 3 after
    // its frame count byte, padding length and, if VBR, frame lengths.
    let frame = match toc & 3 {
        0 | 1 => payload.get(1..),
        2 => match payload.get(1) {
            Some(&l) if l < 252 => payload.get(2..),
            Some(_) => payload.get(3..),
            None => None,
        },
        _ => {
            let Some(&count) = payload.get(1) else {
                return false;
            };
            let mut at = 2;
            if count & 0x40 != 0 {
                // Padding length: bytes of 255 continue it.
                while let Some(&b) = payload.get(at) {
                    at += 1;
                    if b != 255 {
                        break;
                    }
                }
            }
            if count & 0x80 != 0 {
                // VBR: one length (1 or 2 bytes) per frame but the last.
                for _ in 1..(count & 0x3F) {
                    match payload.get(at) {
                        Some(&l) if l < 252 => at += 1,
                        Some(_) => at += 2,
                        None => return false,
                    }
                }
            }
            payload.get(at..)
        }
    };
    let Some(frame) = frame.filter(|f| !f.is_empty()) else {
        return false;
    };
    // SILK frames of 20 ms in the Opus frame: 10 and 20 ms frames hold
    // one, 40 ms two, 60 ms three (hybrid frames are 10 or 20 ms).
    let silk_frames = if config < 12 {
        match config & 3 {
            2 => 2,
            3 => 3,
            _ => 1,
        }
    } else {
        1
    };
    let stereo = toc & 0x04 != 0;
    let mut dec = RangeDecoder::new(frame);
    // Mid (or mono) channel: one VAD flag per SILK frame, then its LBRR
    // flag; the side channel follows the same way.
    for _ in 0..silk_frames {
        dec.bit();
    }
    let mid = dec.bit();
    if !stereo {
        return mid;
    }
    for _ in 0..silk_frames {
        dec.bit();
    }
    mid || dec.bit()
}

/// Just enough of Opus's range decoder (RFC 6716 section 4.1) to read
/// bits of probability 1/2 from the start of a frame.
struct RangeDecoder<'a> {
    data: &'a [u8],
    at: usize,
    rng: u32,
    val: u32,
    rem: u32,
}

impl<'a> RangeDecoder<'a> {
    fn new(data: &'a [u8]) -> RangeDecoder<'a> {
        let mut d = RangeDecoder {
            data,
            at: 0,
            rng: 128,
            val: 0,
            rem: 0,
        };
        d.rem = d.byte();
        d.val = 127 - (d.rem >> 1);
        d.normalize();
        d
    }

    /// The next byte; zeros past the end, as the RFC's decoder reads them.
    fn byte(&mut self) -> u32 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        u32::from(b)
    }

    fn normalize(&mut self) {
        while self.rng <= 1 << 23 {
            self.rng <<= 8;
            let sym = self.rem;
            self.rem = self.byte();
            let sym = ((sym << 8) | self.rem) >> 1;
            self.val = ((self.val << 8) + (255 & !sym)) & 0x7FFF_FFFF;
        }
    }

    /// A bit coded with `ec_dec_bit_logp(1)`.
    fn bit(&mut self) -> bool {
        let s = self.rng >> 1;
        let one = self.val < s;
        if one {
            self.rng = s;
        } else {
            self.val -= s;
            self.rng -= s;
        }
        self.normalize();
        one
    }
}

/// The receiver's decoder: one libopus decoder per channel count, both
/// made at start-up, so a stream of either layout decodes without
/// allocating.
pub struct Decoder {
    mono: opus::Decoder,
    stereo: opus::Decoder,
    channels: u16,
}

impl Decoder {
    pub fn new() -> Result<Decoder, OpusError> {
        let make = |ch| {
            opus::Decoder::new(RATE, ch).map_err(|e| OpusError::Create {
                what: "decoder",
                error: e.to_string(),
            })
        };
        Ok(Decoder {
            mono: make(opus::Channels::Mono)?,
            stereo: make(opus::Channels::Stereo)?,
            channels: 1,
        })
    }

    /// A new stream (or a restart of one): forget the old one's state.
    pub fn reset(&mut self, channels: u16) {
        self.channels = if channels >= 2 { 2 } else { 1 };
        // Only fails on a bad handle, which `new` ruled out.
        let _ = self.current().reset_state();
    }

    pub fn channels(&self) -> u16 {
        self.channels
    }

    fn current(&mut self) -> &mut opus::Decoder {
        if self.channels == 2 {
            &mut self.stereo
        } else {
            &mut self.mono
        }
    }

    /// Decodes one packet into `out` (interleaved); returns its frames.
    /// `out` must hold the packet's frames (`packet_frames`).
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        if packet.is_empty() {
            return Ok(0);
        }
        self.current()
            .decode(packet, out, false)
            .map_err(|e| OpusError::Codec(e.code()))
    }

    /// The decoder's own concealment (PLC) of `out.len() / channels`
    /// missing frames, a multiple of `MIN_FRAME`.
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<usize, OpusError> {
        self.current()
            .decode(&[], out, false)
            .map_err(|e| OpusError::Codec(e.code()))
    }

    /// Decodes the frames just before `next` (lost) from `next`'s in-band
    /// FEC data: `out.len() / channels` frames, a multiple of `MIN_FRAME`.
    /// libopus conceals what the FEC copy does not cover (a hole longer
    /// than one frame, or a packet without FEC). `next` is decoded
    /// normally afterwards.
    pub fn recover(&mut self, next: &[u8], out: &mut [i16]) -> Result<usize, OpusError> {
        self.current()
            .decode(next, out, true)
            .map_err(|e| OpusError::Codec(e.code()))
    }
}

/// The sender's encoder settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    /// 1 or 2.
    pub channels: u16,
    /// Target bitrate in bits per second (6000 to 510000).
    pub bitrate_bps: u32,
    /// In-band FEC (RFC 7587 `useinbandfec=1`): each SILK/hybrid packet
    /// carries a coarse copy of the previous frame.
    pub fec: bool,
    /// The loss the encoder plans FEC for, in percent (0 to 100).
    pub expected_loss_pct: u8,
    /// Frames per packet at 48 kHz (the ptime): 120, 240, 480, 960, 1920, 2880.
    pub frame_frames: usize,
    /// Discontinuous transmission: in silence the encoder sends 1-2 byte
    /// packets (comfort noise) instead of full frames.
    pub dtx: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            channels: 2,
            bitrate_bps: 96_000,
            fec: false,
            expected_loss_pct: 0,
            frame_frames: 960,
            dtx: false,
        }
    }
}

/// The sender's encoder: 48 kHz interleaved `i16` in, one packet per frame out.
pub struct Encoder {
    inner: opus::Encoder,
    config: EncoderConfig,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new(config: &EncoderConfig) -> Result<Encoder, OpusError> {
        let channels = opus_channels(config.channels)?;
        if !(6_000..=510_000).contains(&config.bitrate_bps) {
            return Err(OpusError::Bitrate(config.bitrate_bps));
        }
        if config.expected_loss_pct > 100 {
            return Err(OpusError::ExpectedLoss(config.expected_loss_pct));
        }
        if ![120, 240, 480, 960, 1920, 2880].contains(&config.frame_frames) {
            return Err(OpusError::FrameLength(config.frame_frames));
        }
        let mut inner =
            opus::Encoder::new(RATE, channels, opus::Application::Audio).map_err(|e| {
                OpusError::Create {
                    what: "encoder",
                    error: e.to_string(),
                }
            })?;
        let setting = |what| {
            move |e: opus::Error| OpusError::Setting {
                what,
                error: e.to_string(),
            }
        };
        inner
            .set_bitrate(opus::Bitrate::Bits(config.bitrate_bps as i32))
            .map_err(setting("the bitrate"))?;
        inner
            .set_inband_fec(config.fec)
            .map_err(setting("in-band FEC"))?;
        if config.fec {
            // FEC lives in SILK, and libopus leaves CELT for SILK or
            // hybrid only when the expected loss beats its guess of how
            // voice-like the signal is (`(128 - voice_est) >> 4` percent):
            // plucked chords (sox) at 5 % expected loss stayed in CELT,
            // without FEC, for 629 of 650 packets (tried). Asking for FEC
            // is asking for the voice modes, so say the signal is voice:
            // all 650 then go hybrid.
            inner
                .set_signal(opus::Signal::Voice)
                .map_err(setting("the voice signal type"))?;
        }
        inner
            .set_packet_loss_perc(i32::from(config.expected_loss_pct))
            .map_err(setting("the expected loss"))?;
        inner.set_dtx(config.dtx).map_err(setting("DTX"))?;
        Ok(Encoder {
            inner,
            config: *config,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Encodes exactly one frame (`frame_frames * channels` samples) into
    /// `out`; returns the packet's length.
    pub fn encode(&mut self, samples: &[i16], out: &mut [u8]) -> Result<usize, OpusError> {
        let want = self.config.frame_frames * self.config.channels as usize;
        let Some(frame) = samples.get(..want) else {
            return Err(OpusError::FrameLength(
                samples.len() / self.config.channels.max(1) as usize,
            ));
        };
        self.inner
            .encode(frame, out)
            .map_err(|e| OpusError::Codec(e.code()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `seconds` of a sine at `hz`, amplitude `amp`, interleaved.
    fn tone(hz: f64, amp: f64, frames: usize, channels: usize) -> Vec<i16> {
        (0..frames)
            .flat_map(|i| {
                let v = (amp * (2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0).sin())
                    .round() as i16;
                std::iter::repeat(v).take(channels)
            })
            .collect()
    }

    /// Encodes `pcm` frame by frame; returns the packets.
    fn encode_all(enc: &mut Encoder, pcm: &[i16]) -> Vec<Vec<u8>> {
        let step = enc.config().frame_frames * enc.config().channels as usize;
        pcm.chunks_exact(step)
            .map(|f| {
                let mut out = [0u8; MAX_PACKET_BYTES];
                let n = enc.encode(f, &mut out).unwrap();
                out[..n].to_vec()
            })
            .collect()
    }

    fn decode_all(dec: &mut Decoder, packets: &[Vec<u8>], ch: usize) -> Vec<i16> {
        let mut all = Vec::new();
        let mut out = vec![0i16; MAX_PACKET_FRAMES * ch];
        for p in packets {
            let n = dec.decode(p, &mut out).unwrap();
            all.extend_from_slice(&out[..n * ch]);
        }
        all
    }

    /// Frequency of the strongest bin of a DFT over `x` (1 Hz steps near `hz`).
    fn peak_hz(x: &[f64], around: f64) -> f64 {
        let power = |f: f64| {
            let (mut re, mut im) = (0.0, 0.0);
            for (i, &v) in x.iter().enumerate() {
                let w = 2.0 * std::f64::consts::PI * f * i as f64 / 48_000.0;
                re += v * w.cos();
                im += v * w.sin();
            }
            re * re + im * im
        };
        let mut best = (around, 0.0);
        let mut f = around - 50.0;
        while f <= around + 50.0 {
            let p = power(f);
            if p > best.1 {
                best = (f, p);
            }
            f += 1.0;
        }
        best.0
    }

    /// SNR in dB of `got` against `want` at the lag (0..lag_max) that fits best.
    fn snr_db(want: &[f64], got: &[f64], lag_max: usize) -> (f64, usize) {
        let mut best = (f64::MIN, 0);
        for lag in 0..lag_max {
            let n = want.len().min(got.len().saturating_sub(lag));
            let (mut s, mut e) = (0.0, 0.0);
            for i in 0..n {
                s += want[i] * want[i];
                let d = got[i + lag] - want[i];
                e += d * d;
            }
            let snr = 10.0 * (s / e.max(1e-9)).log10();
            if snr > best.0 {
                best = (snr, lag);
            }
        }
        best
    }

    fn channel(x: &[i16], ch: usize, c: usize) -> Vec<f64> {
        x.iter()
            .skip(c)
            .step_by(ch)
            .map(|&v| f64::from(v))
            .collect()
    }

    #[test]
    fn stereo_tone_round_trip_keeps_frequency_and_level() {
        let mut enc = Encoder::new(&EncoderConfig::default()).unwrap();
        let mut dec = Decoder::new().unwrap();
        dec.reset(2);
        let pcm = tone(1000.0, 10_000.0, 48_000, 2);
        let packets = encode_all(&mut enc, &pcm);
        assert_eq!(packets.len(), 50);
        assert!(packets.iter().all(|p| packet_frames(p) == Some(960)));
        let out = decode_all(&mut dec, &packets, 2);
        assert_eq!(out.len(), pcm.len());
        for c in 0..2 {
            // Past the codec's start-up (lookahead 6.5 ms, first frames).
            let got = channel(&out, 2, c);
            let want = channel(&pcm, 2, c);
            let hz = peak_hz(&got[9600..19200], 1000.0);
            assert!((hz - 1000.0).abs() <= 2.0, "channel {c}: peak at {hz} Hz");
            let rms =
                (got[9600..].iter().map(|v| v * v).sum::<f64>() / (got.len() - 9600) as f64).sqrt();
            let want_rms = 10_000.0 / 2f64.sqrt();
            assert!(
                (rms / want_rms - 1.0).abs() < 0.05,
                "channel {c}: rms {rms:.0} vs {want_rms:.0}"
            );
            let (snr, lag) = snr_db(&want[9600..40_000], &got[9600..], 400);
            println!("channel {c}: SNR {snr:.1} dB at a delay of {lag} frames");
            assert!(snr > 20.0, "channel {c}: SNR {snr:.1} dB");
        }
    }

    /// Voice-like settings, where FEC lives (SILK): 16 kbit/s mono, FEC on.
    fn fec_encoder() -> Encoder {
        Encoder::new(&EncoderConfig {
            channels: 1,
            bitrate_bps: 24_000,
            fec: true,
            expected_loss_pct: 20,
            frame_frames: 960,
            dtx: false,
        })
        .unwrap()
    }

    /// A voice-like test signal: a 200 Hz buzz with harmonics, slowly
    /// changing in level.
    fn voiced(frames: usize) -> Vec<i16> {
        (0..frames)
            .map(|i| {
                let t = i as f64 / 48_000.0;
                let env = 0.6 + 0.4 * (2.0 * std::f64::consts::PI * 1.5 * t).sin();
                let v: f64 = (1..=8)
                    .map(|k| (2.0 * std::f64::consts::PI * 200.0 * k as f64 * t).sin() / k as f64)
                    .sum();
                (6000.0 * env * v).round() as i16
            })
            .collect()
    }

    #[test]
    fn lost_packet_recovered_from_fec_is_closer_than_plc() {
        let pcm = voiced(48_000);
        let mut enc = fec_encoder();
        let packets = encode_all(&mut enc, &pcm);
        assert!(
            packets.iter().skip(5).all(|p| can_carry_fec(p)),
            "SILK mode"
        );
        let lost = 30;
        let mut reference = Decoder::new().unwrap();
        reference.reset(1);
        let clean = decode_all(&mut reference, &packets, 1);
        let frame = 960;
        let mut out = vec![0i16; frame];
        let mut errors = Vec::new();
        for use_fec in [true, false] {
            let mut dec = Decoder::new().unwrap();
            dec.reset(1);
            decode_all(&mut dec, &packets[..lost], 1);
            let n = if use_fec {
                dec.recover(&packets[lost + 1], &mut out).unwrap()
            } else {
                dec.conceal(&mut out).unwrap()
            };
            assert_eq!(n, frame);
            let want = &clean[lost * frame..(lost + 1) * frame];
            let err: f64 = want
                .iter()
                .zip(&out)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            let sig: f64 = want.iter().map(|&a| f64::from(a).powi(2)).sum();
            errors.push(10.0 * (sig / err.max(1.0)).log10());
        }
        println!(
            "lost frame: FEC {:.1} dB, PLC {:.1} dB (SNR against the clean decode)",
            errors[0], errors[1]
        );
        assert!(errors[0] > errors[1] + 3.0, "FEC {errors:?}");
        assert!(errors[0] > 5.0, "FEC {errors:?}");
    }

    #[test]
    fn lbrr_flag_read_from_the_packets_says_which_carry_fec() {
        let pcm = voiced(48_000);
        let with = encode_all(&mut fec_encoder(), &pcm);
        let mut without = Encoder::new(&EncoderConfig {
            fec: false,
            ..*fec_encoder().config()
        })
        .unwrap();
        let without = encode_all(&mut without, &pcm);
        let count = |p: &[Vec<u8>]| p.iter().filter(|p| carries_fec(p)).count();
        println!(
            "LBRR set in {} of {} packets with FEC, {} without",
            count(&with),
            with.len(),
            count(&without)
        );
        // The flag says exactly what libopus does: where it is set, the
        // FEC decode of the lost frame before differs from concealment;
        // where it is clear (libopus protects only frames it judges
        // active), the FEC decode is plain concealment.
        let agrees = |packets: &[Vec<u8>], ch: usize| {
            for k in 1..packets.len() {
                let mut a = Decoder::new().unwrap();
                let mut b = Decoder::new().unwrap();
                a.reset(ch as u16);
                b.reset(ch as u16);
                decode_all(&mut a, &packets[..k - 1], ch);
                decode_all(&mut b, &packets[..k - 1], ch);
                let (mut fa, mut fb) = (vec![0i16; 960 * ch], vec![0i16; 960 * ch]);
                a.recover(&packets[k], &mut fa).unwrap();
                b.conceal(&mut fb).unwrap();
                assert_eq!(carries_fec(&packets[k]), fa != fb, "packet {k} of {ch} ch");
            }
        };
        agrees(&with, 1);
        assert!(!carries_fec(&with[0]), "nothing before the first packet");
        assert!(count(&with) >= with.len() / 2, "{}", count(&with));
        assert_eq!(count(&without), 0);
        // Stereo hybrid at a music bitrate, voice signal: the side
        // channel's flag is read after the mid channel's.
        let mut st = Encoder::new(&EncoderConfig {
            channels: 2,
            bitrate_bps: 64_000,
            fec: true,
            expected_loss_pct: 10,
            ..EncoderConfig::default()
        })
        .unwrap();
        let stereo: Vec<i16> = pcm.iter().flat_map(|&v| [v, v / 2]).collect();
        let sp = encode_all(&mut st, &stereo);
        assert!(sp.iter().skip(5).all(|p| can_carry_fec(p)));
        println!("stereo hybrid: LBRR set in {} of {}", count(&sp), sp.len());
        assert!(count(&sp) >= sp.len() / 2, "{}", count(&sp));
        agrees(&sp, 2);
        // CELT packets never do; junk never panics.
        assert!(!carries_fec(&[0xFC, 1, 2, 3]));
        for len in 0..40usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 91 + len * 7) as u8).collect();
            let _ = carries_fec(&junk);
        }
    }

    #[test]
    fn dtx_silence_is_sent_as_tiny_packets_that_decode_quiet() {
        let mut enc = Encoder::new(&EncoderConfig {
            channels: 1,
            bitrate_bps: 24_000,
            dtx: true,
            ..EncoderConfig::default()
        })
        .unwrap();
        let mut pcm = voiced(24_000);
        pcm.extend(std::iter::repeat(0).take(48_000));
        let packets = encode_all(&mut enc, &pcm);
        let tiny = packets[25..].iter().filter(|p| p.len() <= 2).count();
        println!("DTX: {tiny} of the 50 silent frames sent as packets of 1-2 bytes");
        // libopus enters DTX after ~200 ms of silence (10 frames).
        assert!(tiny >= 35, "{tiny}");
        assert!(packets[25..].iter().all(|p| packet_frames(p) == Some(960)));
        assert_eq!(packet_frames(&[]), Some(0));
        let mut dec = Decoder::new().unwrap();
        dec.reset(1);
        let out = decode_all(&mut dec, &packets, 1);
        assert_eq!(out.len(), pcm.len());
        let rms = |x: &[i16]| {
            (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
        };
        let (speech, quiet) = (rms(&out[4800..24_000]), rms(&out[36_000..]));
        println!("DTX: speech rms {speech:.0}, comfort noise rms {quiet:.0}");
        // Comfort noise, ~24 dB under the speech here.
        assert!(quiet < speech / 10.0, "DTX decodes to rms {quiet:.0}");
    }

    #[test]
    fn malformed_packets_are_refused_not_panicking() {
        let mut dec = Decoder::new().unwrap();
        dec.reset(2);
        let mut out = vec![0i16; 2 * MAX_PACKET_FRAMES];
        // Code 3 (arbitrary frame count) needs a count byte.
        assert_eq!(packet_frames(&[0x03]), None);
        // 48 frames of 20 ms: beyond 120 ms.
        assert_eq!(packet_frames(&[0xFB, 48]), None);
        for len in 1..64usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            if let Some(n) = packet_frames(&junk) {
                let _ = dec.decode(&junk, &mut out[..n.max(1) * 2]);
            }
        }
        assert!(dec.decode(&[0xFB, 3, 1, 2, 3], &mut out[..10]).is_err());
    }

    #[test]
    fn encoder_settings_are_checked() {
        let bad = |f: fn(&mut EncoderConfig)| {
            let mut c = EncoderConfig::default();
            f(&mut c);
            Encoder::new(&c).err()
        };
        assert_eq!(bad(|c| c.channels = 3), Some(OpusError::Channels(3)));
        assert_eq!(
            bad(|c| c.bitrate_bps = 1000),
            Some(OpusError::Bitrate(1000))
        );
        assert_eq!(
            bad(|c| c.frame_frames = 1000),
            Some(OpusError::FrameLength(1000))
        );
        assert_eq!(
            bad(|c| c.expected_loss_pct = 101),
            Some(OpusError::ExpectedLoss(101))
        );
    }
}
