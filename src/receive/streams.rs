//! `--stream ADDR:PORT[,priority=N][,group=ADDR][,srtp-key-file=FILE]
//! [,rtp-format=PT=ENC/RATE[/CH]][,name=NAME]`: one of several streams a
//! receiver plays, each on its own socket with its own source lock and
//! jitter buffer, arbitrated by [`crate::receive::priority`]. This module
//! only reads the option's text; a bad one is an error naming the part
//! and what would be right.

use crate::audio::format::{parse_rtp_format, FormatError, StreamFormat};
use core::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Paging priorities as paging speakers number them (CyberData, Algo).
pub const MAX_PRIORITY: u8 = 9;

/// One `--stream`.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSpec {
    /// What the log and statistics line call it: `name=`, else the
    /// address as given.
    pub name: String,
    pub listen: SocketAddr,
    /// Higher wins the speaker.
    pub priority: u8,
    pub group: Option<IpAddr>,
    pub srtp_key_file: Option<PathBuf>,
    /// Dynamic payload types of this stream, on top of the static ones
    /// and the global `--rtp-format`s.
    pub formats: Vec<(u8, StreamFormat)>,
}

#[derive(Debug, PartialEq)]
pub enum SpecError {
    Empty,
    Address(String),
    NotKeyValue(String),
    UnknownKey(String),
    Repeated(&'static str),
    EmptyValue(&'static str),
    Priority(String),
    Group { value: String, why: &'static str },
    Format { value: String, error: FormatError },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Empty => f.write_str(
                "--stream: empty; give ADDR:PORT[,priority=N][,group=ADDR][,srtp-key-file=FILE][,rtp-format=PT=ENC/RATE[/CH]][,name=NAME]",
            ),
            SpecError::Address(a) => write!(
                f,
                "--stream: '{a}' is not ADDR:PORT (e.g. 0.0.0.0:5004, [::]:5004 or 239.1.1.1:5004)"
            ),
            SpecError::NotKeyValue(p) => write!(
                f,
                "--stream: '{p}' is not KEY=VALUE (keys: priority, group, srtp-key-file, rtp-format, name)"
            ),
            SpecError::UnknownKey(k) => write!(
                f,
                "--stream: unknown key '{k}' (keys: priority, group, srtp-key-file, rtp-format, name)"
            ),
            SpecError::Repeated(k) => write!(f, "--stream: {k}= given twice in one stream"),
            SpecError::EmptyValue(k) => write!(f, "--stream: {k}= needs a value"),
            SpecError::Priority(v) => write!(
                f,
                "--stream: priority '{v}' is not a whole number from 0 to {MAX_PRIORITY} (higher wins the speaker)"
            ),
            SpecError::Group { value, why } => write!(f, "--stream: group '{value}' {why}"),
            SpecError::Format { value, error } => {
                write!(f, "--stream: rtp-format '{value}': {error}")
            }
        }
    }
}

impl std::error::Error for SpecError {}

impl StreamSpec {
    pub fn parse(text: &str) -> Result<StreamSpec, SpecError> {
        let mut parts = text.split(',');
        let address = parts.next().unwrap_or_default().trim();
        if address.is_empty() {
            return Err(SpecError::Empty);
        }
        let listen = address
            .parse::<SocketAddr>()
            .map_err(|_| SpecError::Address(address.to_string()))?;
        let mut spec = StreamSpec {
            name: address.to_string(),
            listen,
            priority: 0,
            group: None,
            srtp_key_file: None,
            formats: Vec::new(),
        };
        let (mut priority, mut name) = (false, false);
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue(part.to_string()))?;
            let (key, value) = (key.trim(), value.trim());
            let known = match key {
                "priority" => "priority",
                "group" => "group",
                "srtp-key-file" => "srtp-key-file",
                "rtp-format" => "rtp-format",
                "name" => "name",
                _ => return Err(SpecError::UnknownKey(key.to_string())),
            };
            if value.is_empty() {
                return Err(SpecError::EmptyValue(known));
            }
            let once = |given: bool| {
                if given {
                    Err(SpecError::Repeated(known))
                } else {
                    Ok(true)
                }
            };
            match known {
                "priority" => {
                    priority = once(priority)?;
                    spec.priority = value
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= MAX_PRIORITY)
                        .ok_or_else(|| SpecError::Priority(value.to_string()))?;
                }
                "group" => {
                    once(spec.group.is_some())?;
                    let addr = value.parse::<IpAddr>().map_err(|_| SpecError::Group {
                        value: value.to_string(),
                        why: "is not an IP address",
                    })?;
                    if !addr.is_multicast() {
                        return Err(SpecError::Group {
                            value: value.to_string(),
                            why: "is not a multicast address (224.0.0.0/4 or ff00::/8)",
                        });
                    }
                    spec.group = Some(addr);
                }
                "srtp-key-file" => {
                    once(spec.srtp_key_file.is_some())?;
                    spec.srtp_key_file = Some(PathBuf::from(value));
                }
                "rtp-format" => {
                    let format = parse_rtp_format(value).map_err(|error| SpecError::Format {
                        value: value.to_string(),
                        error,
                    })?;
                    spec.formats.push(format);
                }
                _ => {
                    name = once(name)?;
                    spec.name = value.to_string();
                }
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::format::Encoding;

    #[test]
    fn address_alone_is_priority_zero_named_by_its_address() {
        let s = StreamSpec::parse("0.0.0.0:5004").expect("spec");
        assert_eq!(s.listen, "0.0.0.0:5004".parse().expect("addr"));
        assert_eq!((s.priority, s.name.as_str()), (0, "0.0.0.0:5004"));
        assert_eq!((s.group, &s.srtp_key_file), (None, &None));
        assert!(s.formats.is_empty());
    }

    #[test]
    fn every_key() {
        let s = StreamSpec::parse(
            "[::]:5010,priority=9,group=ff05::1:3,srtp-key-file=/etc/netspeaker/page.key,\
             rtp-format=96=L16/8000/1,rtp-format=97=OPUS/48000/2,name=page",
        )
        .expect("spec");
        assert_eq!(s.priority, 9);
        assert_eq!(s.group, Some("ff05::1:3".parse().expect("group")));
        assert_eq!(
            s.srtp_key_file,
            Some(PathBuf::from("/etc/netspeaker/page.key"))
        );
        assert_eq!(s.name, "page");
        assert_eq!(s.formats.len(), 2);
        assert_eq!(s.formats[0].0, 96);
        assert_eq!(s.formats[0].1.encoding, Encoding::L16);
        assert_eq!((s.formats[0].1.rate, s.formats[0].1.channels), (8000, 1));
        assert_eq!(s.formats[1].1.encoding, Encoding::Opus);
    }

    fn error(text: &str) -> String {
        let e = StreamSpec::parse(text).expect_err(text);
        e.to_string()
    }

    #[test]
    fn bad_specs_name_the_part_and_what_is_right() {
        assert!(error("").contains("ADDR:PORT[,priority=N]"));
        assert!(error("5004").contains("'5004' is not ADDR:PORT"));
        assert!(error("localhost:5004").contains("is not ADDR:PORT"));
        assert!(error("0.0.0.0:5004,priority").contains("'priority' is not KEY=VALUE"));
        assert!(error("0.0.0.0:5004,volume=3").contains("unknown key 'volume'"));
        assert!(error("0.0.0.0:5004,priority=10").contains("from 0 to 9"));
        assert!(error("0.0.0.0:5004,priority=-1").contains("priority '-1'"));
        assert!(error("0.0.0.0:5004,priority=high").contains("priority 'high'"));
        assert!(error("0.0.0.0:5004,priority=1,priority=2").contains("priority= given twice"));
        assert!(error("0.0.0.0:5004,group=10.0.0.1").contains("not a multicast address"));
        assert!(error("0.0.0.0:5004,group=everyone").contains("not an IP address"));
        assert!(error("0.0.0.0:5004,srtp-key-file=").contains("srtp-key-file= needs a value"));
        let e = error("0.0.0.0:5004,rtp-format=95=L16/8000");
        assert!(e.contains("rtp-format '95=L16/8000'"), "{e}");
        let e = error("0.0.0.0:5004,rtp-format=96=MP3/44100");
        assert!(e.contains("MP3"), "{e}");
        assert!(error("0.0.0.0:5004,name=a,name=b").contains("name= given twice"));
    }
}
