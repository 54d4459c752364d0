//! SDP session descriptions (RFC 8866, formerly RFC 4566) as a receiver
//! reads them from SAP announcements. Input: the SDP text. Output: a
//! [`Session`] holding what the receiver needs — the session name (`s=`),
//! the origin's session id and version (`o=`), the connection address
//! with its TTL (`c=`), the first RTP audio stream's port and payload
//! types (`m=audio PORT RTP/AVP PT...`) resolved to stream formats through
//! `a=rtpmap`, and `a=fmtp` / `a=ptime` — or an [`Error`] naming the line.
//!
//! Policy: lenient where real senders are sloppy, strict where a guess
//! would play noise. Lines may end in CRLF or LF (PulseAudio writes LF);
//! unknown lines and attributes are skipped; a multicast `c=` without a
//! TTL (PulseAudio) is taken. The static payload types of RFC 3551 we
//! play (0 PCMU, 8 PCMA, 10/11 L16 44.1 kHz) need no `a=rtpmap` (an
//! announcement of PT 0 without one is legal; PipeWire 0.3.65 crashed on
//! it); an `a=rtpmap` overrides them. Payload types in an encoding we do
//! not play (Opus, G.722, ...) are listed in `Session::unplayable`; a
//! stream with none we play is an error, as is an encrypted profile
//! (`RTP/SAVP`: the key is not ours) or a host name in `c=`.

use core::fmt;
use std::net::IpAddr;

use crate::audio::format::{Encoding, PayloadMap, StreamFormat, MAX_CHANNELS, MAX_RATE, MIN_RATE};

/// The `o=` line: who made the session, and which edit of it this is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: u64,
    pub version: u64,
    /// The creator's address as written (PulseAudio writes 0.0.0.0 when it
    /// has no route).
    pub address: String,
}

/// What a receiver needs from a session description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// `s=`, the name people choose the stream by.
    pub name: String,
    pub origin: Origin,
    /// Where the stream is sent (`c=`, media level over session level).
    pub address: IpAddr,
    /// IPv4 multicast TTL when `c=` states one.
    pub ttl: Option<u8>,
    /// The audio stream's UDP port (`m=audio PORT`).
    pub port: u16,
    /// The payload types we can play, in the `m=` line's order of
    /// preference.
    pub formats: Vec<(u8, StreamFormat)>,
    /// Payload types in an encoding we do not play, with its `a=rtpmap`
    /// text (or "unknown" when it has none).
    pub unplayable: Vec<(u8, String)>,
    /// `a=fmtp:PT PARAMS` of the audio stream, as written.
    pub fmtp: Vec<(u8, String)>,
    /// `a=ptime`, milliseconds of audio per packet, if stated.
    pub ptime_ms: Option<u32>,
}

impl Origin {
    /// Whether both name the same session (RFC 8866: username, session id
    /// and address; the version tells edits of it apart).
    pub fn same_session(&self, other: &Origin) -> bool {
        self.username == other.username
            && self.session_id == other.session_id
            && self.address == other.address
    }
}

impl Session {
    /// The static table plus this session's payload types: the receiver's
    /// payload map for this stream.
    pub fn payload_map(&self) -> PayloadMap {
        let mut map = PayloadMap::default();
        for &(pt, f) in &self.formats {
            map.set(pt, f);
        }
        map
    }

    /// Same stream on the wire (address, port, formats): a new version
    /// that changes none of these needs nothing of the receiver.
    pub fn same_stream(&self, other: &Session) -> bool {
        self.address == other.address && self.port == other.port && self.formats == other.formats
    }
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' at ", self.name)?;
        match self.address {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port)?,
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port)?,
        }
        for (i, (pt, format)) in self.formats.iter().enumerate() {
            let sep = if i == 0 { ' ' } else { ',' };
            write!(f, "{sep}PT {pt} {format}")?;
        }
        Ok(())
    }
}

/// Why a description cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The text does not start with `v=0`.
    Version,
    /// A line the receiver needs is malformed: its number (1-based) and
    /// what is wrong.
    Line { number: usize, reason: &'static str },
    /// A required line is missing (`o=`, `s=`, `c=`).
    Missing(&'static str),
    /// No `m=audio` stream over RTP/AVP.
    NoAudio,
    /// Only an encrypted profile (RTP/SAVP...): we would need the key.
    Encrypted(String),
    /// `c=` names a host instead of an address.
    HostName(String),
    /// The audio stream has no payload type we play; the rtpmaps it has.
    NoPlayableFormat(Vec<(u8, String)>),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Version => write!(f, "not an SDP description (no 'v=0' first)"),
            Error::Line { number, reason } => {
                write!(f, "SDP line {number}: {reason}; check the sender's SDP")
            }
            Error::Missing(what) => write!(f, "SDP without the required {what} line"),
            Error::NoAudio => write!(f, "SDP without an RTP/AVP audio stream (m=audio)"),
            Error::Encrypted(p) => write!(
                f,
                "the stream uses the encrypted profile {p}: announce it as RTP/AVP or \
                 receive it with --srtp-key-file and --rtp-format instead of --sap"
            ),
            Error::HostName(h) => write!(
                f,
                "c= names the host '{h}': only IP addresses are taken; have the sender \
                 announce its address"
            ),
            Error::NoPlayableFormat(types) => {
                write!(
                    f,
                    "the stream's payload types are none we play (L16, PCMU, PCMA):"
                )?;
                for (pt, map) in types {
                    write!(f, " {pt} {map};")?;
                }
                write!(f, " have the sender use one of those")
            }
        }
    }
}

impl std::error::Error for Error {}

/// The audio stream's `m=` line while it is being read.
struct Media {
    port: u16,
    payload_types: Vec<u8>,
    rtpmap: Vec<(u8, String)>,
    fmtp: Vec<(u8, String)>,
    ptime_ms: Option<u32>,
    connection: Option<(IpAddr, Option<u8>)>,
}

/// Parses an SDP text; see the module comment for what is taken.
pub fn parse(text: &str) -> Result<Session, Error> {
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.is_empty());
    match lines.next() {
        Some((_, l)) if l.trim_end() == "v=0" => {}
        _ => return Err(Error::Version),
    }
    let mut origin = None;
    let mut name = None;
    let mut connection = None;
    let mut audio: Option<Media> = None;
    // True while inside an m= section other than the chosen audio one.
    let mut other_media = false;
    let mut encrypted_profile = None;
    for (number, line) in lines {
        let bad = |reason| Error::Line { number, reason };
        let Some((kind, value)) = line.split_once('=') else {
            return Err(bad("not of the form x=value"));
        };
        let in_audio = audio.is_some() && !other_media;
        match kind {
            "o" if origin.is_none() => origin = Some(parse_origin(value).map_err(bad)?),
            "s" if name.is_none() => name = Some(value.to_string()),
            "c" => {
                let c = parse_connection(value).map_err(|e| match e {
                    ConnError::Host(h) => Error::HostName(h),
                    ConnError::Syntax(r) => bad(r),
                })?;
                match (&mut audio, other_media) {
                    (Some(m), false) => m.connection = Some(c),
                    (None, false) => connection = Some(c),
                    _ => {}
                }
            }
            "m" => {
                let mut parts = value.split_ascii_whitespace();
                let (Some(media), Some(port), Some(profile)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad("m= needs media, port, profile and formats"));
                };
                other_media = true;
                if media != "audio" || audio.is_some() {
                    continue;
                }
                if profile != "RTP/AVP" && profile != "RTP/AVPF" {
                    if profile.starts_with("RTP/") {
                        encrypted_profile = Some(profile.to_string());
                    }
                    continue;
                }
                // PORT or PORT/COUNT (hierarchical encoding): the first.
                let port = port
                    .split('/')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|&p| p != 0)
                    .ok_or(bad("m= port is not a UDP port from 1 to 65535"))?;
                let payload_types = parts
                    .map(|p| p.parse::<u8>().ok().filter(|&p| p < 128))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or(bad("m= payload type is not a number from 0 to 127"))?;
                if payload_types.is_empty() {
                    return Err(bad("m= lists no payload type"));
                }
                audio = Some(Media {
                    port,
                    payload_types,
                    rtpmap: Vec::new(),
                    fmtp: Vec::new(),
                    ptime_ms: None,
                    connection: None,
                });
                other_media = false;
            }
            "a" if in_audio => {
                let Some(m) = audio.as_mut() else { continue };
                let (attr, arg) = value.split_once(':').unwrap_or((value, ""));
                match attr {
                    "rtpmap" | "fmtp" => {
                        let Some((pt, rest)) = arg.split_once(' ') else {
                            return Err(bad("a=rtpmap/fmtp needs PT and a value"));
                        };
                        let pt = pt
                            .parse::<u8>()
                            .ok()
                            .filter(|&p| p < 128)
                            .ok_or(bad("a=rtpmap/fmtp payload type is not 0 to 127"))?;
                        let list = if attr == "rtpmap" {
                            &mut m.rtpmap
                        } else {
                            &mut m.fmtp
                        };
                        list.push((pt, rest.trim().to_string()));
                    }
                    "ptime" => {
                        // Some senders write fractions ("20.0").
                        m.ptime_ms = arg
                            .trim()
                            .split('.')
                            .next()
                            .and_then(|p| p.parse::<u32>().ok())
                            .filter(|&p| p > 0);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let origin = origin.ok_or(Error::Missing("o="))?;
    let name = name.ok_or(Error::Missing("s="))?;
    let Some(media) = audio else {
        return Err(match encrypted_profile {
            Some(p) => Error::Encrypted(p),
            None => Error::NoAudio,
        });
    };
    let (address, ttl) = media
        .connection
        .or(connection)
        .ok_or(Error::Missing("c="))?;
    let statics = PayloadMap::default();
    let mut formats = Vec::new();
    let mut unplayable = Vec::new();
    for &pt in &media.payload_types {
        let map = media.rtpmap.iter().find(|(p, _)| *p == pt).map(|(_, m)| m);
        let format = match map {
            Some(m) => parse_rtpmap(m),
            None => statics.get(pt),
        };
        match format {
            Some(f) => formats.push((pt, f)),
            None => unplayable.push((pt, map.cloned().unwrap_or_else(|| "unknown".into()))),
        }
    }
    if formats.is_empty() {
        return Err(Error::NoPlayableFormat(unplayable));
    }
    Ok(Session {
        name,
        origin,
        address,
        ttl,
        port: media.port,
        formats,
        unplayable,
        fmtp: media.fmtp,
        ptime_ms: media.ptime_ms,
    })
}

/// The `o=` line alone: a SAP deletion may carry only that (RFC 2974).
pub fn origin_of(text: &str) -> Option<Origin> {
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .find_map(|l| l.strip_prefix("o="))
        .and_then(|o| parse_origin(o).ok())
}

/// `ENCODING/RATE[/CHANNELS]` of an encoding we play, else `None`.
fn parse_rtpmap(map: &str) -> Option<StreamFormat> {
    let mut parts = map.split('/');
    let encoding = match parts.next()?.to_ascii_uppercase().as_str() {
        "L16" => Encoding::L16,
        "PCMU" => Encoding::Pcmu,
        "PCMA" => Encoding::Pcma,
        _ => return None,
    };
    let rate = parts
        .next()?
        .parse::<u32>()
        .ok()
        .filter(|r| (MIN_RATE..=MAX_RATE).contains(r))?;
    let channels = match parts.next() {
        Some(c) => c
            .parse::<u16>()
            .ok()
            .filter(|c| (1..=MAX_CHANNELS).contains(c))?,
        None => 1,
    };
    Some(StreamFormat {
        encoding,
        rate,
        channels,
    })
}

fn parse_origin(value: &str) -> Result<Origin, &'static str> {
    let mut p = value.split_ascii_whitespace();
    let (Some(user), Some(id), Some(version), Some(_net), Some(_atype), Some(addr)) =
        (p.next(), p.next(), p.next(), p.next(), p.next(), p.next())
    else {
        return Err("o= needs username, session id, version, IN, IP4/IP6 and an address");
    };
    let number = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| "o= session id or version is not a number")
    };
    Ok(Origin {
        username: user.to_string(),
        session_id: number(id)?,
        version: number(version)?,
        address: addr.to_string(),
    })
}

enum ConnError {
    Syntax(&'static str),
    Host(String),
}

/// `IN IP4 ADDR[/TTL[/COUNT]]` or `IN IP6 ADDR[/COUNT]`.
fn parse_connection(value: &str) -> Result<(IpAddr, Option<u8>), ConnError> {
    let mut p = value.split_ascii_whitespace();
    let (Some("IN"), Some(atype), Some(addr)) = (p.next(), p.next(), p.next()) else {
        return Err(ConnError::Syntax("c= is not IN IP4|IP6 ADDRESS"));
    };
    let mut parts = addr.split('/');
    let host = parts.next().unwrap_or_default();
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) if host.chars().any(|c| c.is_ascii_alphabetic()) && !host.contains(':') => {
            return Err(ConnError::Host(host.to_string()))
        }
        Err(_) => return Err(ConnError::Syntax("c= address is not an IP address")),
    };
    let family_ok = matches!((atype, ip), ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)));
    if !family_ok {
        return Err(ConnError::Syntax(
            "c= address type does not match the address",
        ));
    }
    let ttl = match (ip, parts.next()) {
        (IpAddr::V4(_), Some(t)) => Some(
            t.parse::<u8>()
                .map_err(|_| ConnError::Syntax("c= TTL is not a number from 0 to 255"))?,
        ),
        _ => None,
    };
    Ok((ip, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    const L16_48K_STEREO: StreamFormat = StreamFormat {
        encoding: Encoding::L16,
        rate: 48_000,
        channels: 2,
    };

    /// The SDP inside `testdata/pulseaudio_announce.sap` (PulseAudio 16.1
    /// module-rtp-send, captured): LF line ends, no TTL, origin 0.0.0.0.
    #[test]
    fn pulseaudio_announcement() {
        let sap = include_bytes!("testdata/pulseaudio_announce.sap");
        let text = std::str::from_utf8(&sap[24..]).unwrap();
        let s = parse(text).unwrap();
        assert_eq!(s.name, "PulseAudio RTP Stream on vm");
        assert_eq!(s.origin.username, "root");
        assert_eq!(s.origin.session_id, 4_005_091_516);
        assert_eq!(s.origin.version, 0);
        assert_eq!(s.address, "224.0.0.56".parse::<IpAddr>().unwrap());
        assert_eq!(s.ttl, None);
        assert_eq!(s.port, 46000);
        assert_eq!(s.formats, vec![(127, L16_48K_STEREO)]);
        assert_eq!(s.payload_map().get(127), Some(L16_48K_STEREO));
        // The static types stay mapped.
        assert_eq!(
            s.payload_map().get(0).map(|f| f.encoding),
            Some(Encoding::Pcmu)
        );
    }

    /// PipeWire 0.3.65's module-rtp-sink (`testdata/pipewire_announce.sap`,
    /// captured): LF, TTL on c=, tool and ptime lines.
    #[test]
    fn pipewire_0_3_65_announcement() {
        let sap = include_bytes!("testdata/pipewire_announce.sap");
        let text = std::str::from_utf8(&sap[24..]).unwrap();
        let s = parse(text).unwrap();
        assert_eq!(s.name, "PipeWire RTP Stream");
        assert_eq!(s.origin.session_id, 4_005_093_031);
        assert_eq!(s.address, "224.0.0.56".parse::<IpAddr>().unwrap());
        assert_eq!((s.ttl, s.port, s.ptime_ms), (Some(1), 46000, Some(6)));
        assert_eq!(s.formats, vec![(127, L16_48K_STEREO)]);
    }

    /// The format of later PipeWire versions' module-rtp-sap as their
    /// documentation shows it (not captured here): CRLF, AES67 clock
    /// lines, a source filter.
    #[test]
    fn pipewire_aes67_style_announcement() {
        let text = "v=0\r\n\
            o=- 1697125843 1697125844 IN IP4 192.168.1.20\r\n\
            s=PipeWire RTP Stream on kitchen\r\n\
            c=IN IP4 239.255.12.7/32\r\n\
            t=0 0\r\n\
            a=recvonly\r\n\
            a=tool:PipeWire 0.3.65\r\n\
            a=type:broadcast\r\n\
            m=audio 46000 RTP/AVP 96\r\n\
            a=rtpmap:96 L16/48000/2\r\n\
            a=source-filter: incl IN IP4 239.255.12.7 192.168.1.20\r\n\
            a=ptime:4\r\n\
            a=ts-refclk:ptp=IEEE1588-2008:00-11-22-FF-FE-33-44-55:0\r\n\
            a=mediaclk:direct=0\r\n";
        let s = parse(text).unwrap();
        assert_eq!(s.name, "PipeWire RTP Stream on kitchen");
        assert_eq!(s.origin.version, 1_697_125_844);
        assert_eq!(s.address, "239.255.12.7".parse::<IpAddr>().unwrap());
        assert_eq!(s.ttl, Some(32));
        assert_eq!(s.ptime_ms, Some(4));
        assert_eq!(s.formats, vec![(96, L16_48K_STEREO)]);
    }

    /// PT 0 needs no rtpmap (RFC 3551); PipeWire 0.3.65 crashed on this.
    #[test]
    fn static_pcmu_without_rtpmap_is_taken() {
        let text = "v=0\no=- 5 7 IN IP4 10.0.0.1\ns=door\nc=IN IP4 239.1.2.3/16\nt=0 0\n\
                    m=audio 5004 RTP/AVP 0\n";
        let s = parse(text).unwrap();
        assert_eq!(s.formats.len(), 1);
        assert_eq!(s.formats[0].0, 0);
        assert_eq!(s.formats[0].1.encoding, Encoding::Pcmu);
        assert_eq!(s.formats[0].1.rate, 8000);
        for pt in [8u8, 10, 11] {
            let t = text.replace("RTP/AVP 0", &format!("RTP/AVP {pt}"));
            assert_eq!(parse(&t).unwrap().formats[0].0, pt);
        }
    }

    #[test]
    fn our_own_sender_description_round_trips() {
        use crate::send::sdp::{describe, SdpParams};
        let text = describe(&SdpParams {
            dest: "239.255.77.1:5004".parse().unwrap(),
            origin: "10.1.1.1".parse().unwrap(),
            format: L16_48K_STEREO,
            payload_type: 97,
            ptime_ms: 20,
            opus_fec: false,
            ttl: 4,
            session_id: 99,
            crypto: None,
            rtcp: crate::send::sdp::RtcpLine::Port(5005),
            name: "hall".into(),
        });
        let s = parse(&text).unwrap();
        assert_eq!(s.name, "hall");
        assert_eq!((s.origin.session_id, s.ttl, s.port), (99, Some(4), 5004));
        assert_eq!(s.formats, vec![(97, L16_48K_STEREO)]);
        assert_eq!(s.ptime_ms, Some(20));
    }

    #[test]
    fn opus_listed_as_unplayable_next_to_pcmu() {
        let text = "v=0\no=- 1 1 IN IP6 ::1\ns=x\nc=IN IP6 ff15::9\nt=0 0\n\
                    m=audio 6000 RTP/AVP 111 0\na=rtpmap:111 opus/48000/2\n\
                    a=fmtp:111 stereo=1\n";
        let s = parse(text).unwrap();
        assert_eq!(s.address, "ff15::9".parse::<IpAddr>().unwrap());
        assert_eq!(s.formats.iter().map(|f| f.0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(s.unplayable, vec![(111, "opus/48000/2".to_string())]);
        assert_eq!(s.fmtp, vec![(111, "stereo=1".to_string())]);
        let only_opus = text.replace("RTP/AVP 111 0", "RTP/AVP 111");
        assert!(matches!(parse(&only_opus), Err(Error::NoPlayableFormat(_))));
    }

    #[test]
    fn media_level_connection_overrides_session_level() {
        let text = "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=x\nc=IN IP4 239.0.0.1/1\nt=0 0\n\
                    m=video 7000 RTP/AVP 96\nc=IN IP4 239.0.0.9/1\n\
                    m=audio 7002 RTP/AVP 8\nc=IN IP4 239.0.0.2/5\n";
        let s = parse(text).unwrap();
        assert_eq!(s.address, "239.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((s.port, s.ttl), (7002, Some(5)));
    }

    #[test]
    fn refusals_say_why() {
        let base = "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=x\nc=IN IP4 239.0.0.1\nt=0 0\n\
                    m=audio 7000 RTP/AVP 0\n";
        assert_eq!(parse("hello"), Err(Error::Version));
        assert_eq!(parse(""), Err(Error::Version));
        assert!(matches!(
            parse(&base.replace("RTP/AVP", "RTP/SAVP")),
            Err(Error::Encrypted(_))
        ));
        assert!(matches!(
            parse(&base.replace("239.0.0.1", "speaker.example")),
            Err(Error::HostName(_))
        ));
        assert_eq!(
            parse(&base.replace("c=IN IP4 239.0.0.1\n", "")),
            Err(Error::Missing("c="))
        );
        assert_eq!(parse(&base.replace("s=x\n", "")), Err(Error::Missing("s=")));
        assert!(matches!(
            parse(&base.replace("7000", "0")),
            Err(Error::Line { number: 6, .. })
        ));
        assert!(matches!(
            parse(&base.replace("RTP/AVP 0", "RTP/AVP 200")),
            Err(Error::Line { .. })
        ));
        assert!(matches!(
            parse(&base.replace("IN IP4 239", "IN IP6 239")),
            Err(Error::Line { .. })
        ));
        assert!(matches!(
            parse(&base.replace("m=audio", "m=video")),
            Err(Error::NoAudio)
        ));
        assert!(Error::Encrypted("RTP/SAVP".into())
            .to_string()
            .contains("--srtp-key-file"));
    }

    /// Never a panic, whatever the bytes.
    #[test]
    fn random_text_never_panics() {
        let base = "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=x\nc=IN IP4 239.0.0.1/3\nt=0 0\n\
                    m=audio 7000 RTP/AVP 96 0\na=rtpmap:96 L16/48000/2\na=ptime:20\n";
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"v=0oscmat/: \n\r0123456789IPN.LRAV";
        for _ in 0..20_000 {
            let mut bytes = base.as_bytes().to_vec();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % bytes.len();
                bytes[at] = alphabet[(next() as usize) % alphabet.len()];
            }
            let cut = (next() as usize) % (bytes.len() + 1);
            let _ = parse(&String::from_utf8_lossy(&bytes[..cut]));
        }
    }
}
