//! SDP description (RFC 4566, payload formats of RFC 3551). Input: the
//! stream's destination, format, payload type and ptime. Output: the text
//! of a session description that ffmpeg/ffplay (`-protocol_whitelist
//! file,udp,rtp -i x.sdp`) and GStreamer can open to receive the stream.
//! Policy: the connection line names the destination (with `/TTL` for IPv4
//! multicast, as RFC 4566 requires); the origin names the sender's address.
//! An SRTP stream is announced with the profile `RTP/SAVP` and its key in
//! an SDES `a=crypto` line (RFC 4568), as ffmpeg writes and reads it: the
//! text is then a secret, and the caller writes it readable by its owner
//! only.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use crate::audio::format::{Encoding, StreamFormat};
use crate::rtp::srtp::Suite;

/// The SRTP suite and the master key and salt in base64 (`inline:`).
#[derive(Debug, Clone)]
pub struct Crypto {
    pub suite: Suite,
    pub key: String,
}

/// What the description says about RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpLine {
    /// No RTCP: no line (a reader assumes port+1, where nothing comes).
    None,
    /// `a=rtcp:PORT` (RFC 3605).
    Port(u16),
    /// `a=rtcp-mux` (RFC 5761).
    Mux,
}

/// What the description says.
#[derive(Debug, Clone)]
pub struct SdpParams {
    pub dest: SocketAddr,
    /// The sender's own address (for the `o=` line).
    pub origin: IpAddr,
    pub format: StreamFormat,
    pub payload_type: u8,
    pub ptime_ms: u32,
    /// Opus: the encoder sends in-band FEC (`useinbandfec=1`).
    pub opus_fec: bool,
    /// Multicast TTL, written on the `c=` line for IPv4 multicast.
    pub ttl: u8,
    /// Session id and version (NTP-ish numbers; any unique value will do).
    pub session_id: u64,
    /// SRTP: the `a=crypto` line's suite and key.
    pub crypto: Option<Crypto>,
    /// Where RTCP goes.
    pub rtcp: RtcpLine,
    /// The session name (`s=`): what a SAP listener chooses the stream by.
    pub name: String,
}

fn addr_type(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// The SDP text, CRLF line endings as RFC 4566 specifies.
pub fn describe(p: &SdpParams) -> String {
    let mut s = String::new();
    let ip = p.dest.ip();
    let conn = match ip {
        IpAddr::V4(v4) if v4.is_multicast() => format!("{v4}/{}", p.ttl),
        _ => ip.to_string(),
    };
    let opus = p.format.encoding == Encoding::Opus;
    // RFC 7587 section 7: Opus is always announced as opus/48000/2; the
    // channels the sender really sends are in `sprop-stereo`.
    let channels = if opus {
        "/2".to_string()
    } else if p.format.channels > 1 {
        format!("/{}", p.format.channels)
    } else {
        String::new()
    };
    let fmtp = if opus {
        format!(
            "a=fmtp:{} sprop-stereo={}{}\r\n",
            p.payload_type,
            u8::from(p.format.channels > 1),
            if p.opus_fec { ";useinbandfec=1" } else { "" }
        )
    } else {
        String::new()
    };
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        "v=0\r\n\
         o=- {id} {id} IN {ot} {origin}\r\n\
         s={name}\r\n\
         c=IN {ct} {conn}\r\n\
         t=0 0\r\n\
         m=audio {port} {profile} {pt}\r\n\
         a=rtpmap:{pt} {enc}/{rate}{channels}\r\n\
         {fmtp}\
         a=ptime:{ptime}\r\n\
         {crypto}\
         {rtcp}\
         a=sendonly\r\n",
        id = p.session_id,
        ot = addr_type(p.origin),
        origin = p.origin,
        ct = addr_type(ip),
        port = p.dest.port(),
        profile = if p.crypto.is_some() {
            "RTP/SAVP"
        } else {
            "RTP/AVP"
        },
        crypto = match &p.crypto {
            Some(c) => format!("a=crypto:1 {} inline:{}\r\n", c.suite.name(), c.key),
            None => String::new(),
        },
        rtcp = match p.rtcp {
            RtcpLine::None => String::new(),
            RtcpLine::Port(port) => format!("a=rtcp:{port}\r\n"),
            RtcpLine::Mux => "a=rtcp-mux\r\n".to_string(),
        },
        pt = p.payload_type,
        enc = p.format.encoding.rtp_name(),
        rate = p.format.rate,
        ptime = p.ptime_ms,
        // A line break in the name would end the line early.
        name = p.name.replace(['\r', '\n'], " "),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unicast stream to 127.0.0.1:5004, 20 ms, no crypto, no RTCP line;
    /// each test sets what it is about.
    fn params(encoding: Encoding, rate: u32, channels: u16, payload_type: u8) -> SdpParams {
        SdpParams {
            dest: "127.0.0.1:5004".parse().unwrap(),
            origin: "127.0.0.1".parse().unwrap(),
            format: StreamFormat {
                encoding,
                rate,
                channels,
            },
            payload_type,
            ptime_ms: 20,
            opus_fec: false,
            ttl: 1,
            session_id: 42,
            crypto: None,
            rtcp: RtcpLine::None,
            name: "netspeaker-send".into(),
        }
    }

    #[test]
    fn unicast_l16_stereo() {
        let p = params(Encoding::L16, 48_000, 2, 96);
        assert_eq!(
            describe(&p),
            "v=0\r\no=- 42 42 IN IP4 127.0.0.1\r\ns=netspeaker-send\r\n\
             c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 96\r\n\
             a=rtpmap:96 L16/48000/2\r\na=ptime:20\r\na=sendonly\r\n"
        );
    }

    #[test]
    fn opus_is_announced_as_rfc_7587_says() {
        let mut p = SdpParams {
            opus_fec: true,
            ..params(Encoding::Opus, 48_000, 2, 97)
        };
        let text = describe(&p);
        assert!(
            text.contains("a=rtpmap:97 opus/48000/2\r\na=fmtp:97 sprop-stereo=1;useinbandfec=1\r\na=ptime:20\r\n"),
            "{text}"
        );
        p.format.channels = 1;
        p.opus_fec = false;
        let text = describe(&p);
        assert!(
            text.contains("a=rtpmap:97 opus/48000/2\r\na=fmtp:97 sprop-stereo=0\r\n"),
            "{text}"
        );
    }

    #[test]
    fn multicast_pcmu_has_ttl_and_no_channel_count() {
        let p = SdpParams {
            dest: "239.255.77.1:6000".parse().unwrap(),
            origin: "192.168.1.2".parse().unwrap(),
            ptime_ms: 40,
            ttl: 16,
            session_id: 7,
            ..params(Encoding::Pcmu, 8000, 1, 0)
        };
        let s = describe(&p);
        assert!(s.contains("c=IN IP4 239.255.77.1/16\r\n"), "{s}");
        assert!(s.contains("m=audio 6000 RTP/AVP 0\r\n"), "{s}");
        assert!(s.contains("a=rtpmap:0 PCMU/8000\r\n"), "{s}");
        assert!(s.contains("a=ptime:40\r\n"), "{s}");
    }

    #[test]
    fn ipv6_multicast_has_no_ttl() {
        let p = SdpParams {
            dest: "[ff15::77]:5004".parse().unwrap(),
            origin: "::1".parse().unwrap(),
            ttl: 5,
            session_id: 1,
            ..params(Encoding::Pcma, 8000, 1, 8)
        };
        let s = describe(&p);
        assert!(s.contains("o=- 1 1 IN IP6 ::1\r\n"), "{s}");
        assert!(s.contains("c=IN IP6 ff15::77\r\n"), "{s}");
    }

    #[test]
    fn srtp_stream_is_savp_with_an_sdes_crypto_line() {
        let p = SdpParams {
            session_id: 3,
            crypto: Some(Crypto {
                suite: Suite::AesCm128HmacSha1_32,
                key: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd".into(),
            }),
            ..params(Encoding::Pcmu, 8000, 1, 0)
        };
        let s = describe(&p);
        assert!(s.contains("m=audio 5004 RTP/SAVP 0\r\n"), "{s}");
        assert!(
            s.contains(
                "a=crypto:1 AES_CM_128_HMAC_SHA1_32 \
                 inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd\r\n"
            ),
            "{s}"
        );
    }

    #[test]
    fn rtcp_port_or_mux_is_announced() {
        let mut p = SdpParams {
            rtcp: RtcpLine::Port(5005),
            name: "n".into(),
            ..params(Encoding::Pcmu, 8000, 1, 0)
        };
        assert!(describe(&p).contains("a=ptime:20\r\na=rtcp:5005\r\na=sendonly\r\n"));
        p.rtcp = RtcpLine::Mux;
        assert!(describe(&p).contains("a=ptime:20\r\na=rtcp-mux\r\na=sendonly\r\n"));
        p.rtcp = RtcpLine::None;
        assert!(!describe(&p).contains("rtcp"));
    }
}
