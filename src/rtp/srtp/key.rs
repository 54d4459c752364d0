//! SRTP keying material and suite, as the operator gives them: the
//! `--srtp-suite` name and the `--srtp-key-file` holding the master key
//! and salt as one base64 string of 40 characters (30 bytes: 16 of key,
//! 14 of salt), the form SDES (RFC 4568 `a=crypto ... inline:KEY`) and
//! ffmpeg's `-srtp_out_params` / `-srtp_in_params` use.
//!
//! Policy: a key file that is missing, empty, not exactly that string, or
//! readable by group or others is an error at start, never a silent
//! fallback to plaintext. Surrounding whitespace (a trailing newline) is
//! allowed; nothing else is. The key never appears in `Debug` output.

use core::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// Bytes of the AES-128 master key.
pub const MASTER_KEY_LEN: usize = 16;
/// Bytes of the master salt (112 bits).
pub const MASTER_SALT_LEN: usize = 14;
/// Characters of the base64 text of key and salt together.
pub const KEY_TEXT_LEN: usize = 40;

/// A key file longer than this is not a key file.
const MAX_FILE_LEN: u64 = 4096;

/// The crypto suites of RFC 4568 §6.2 that netspeaker speaks: AES in
/// counter mode with a 128-bit key, HMAC-SHA1 tags of 80 or 32 bits on
/// SRTP (SRTCP's tag is 80 bits with both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Suite {
    #[default]
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
}

impl Suite {
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    /// The name SDP (`a=crypto`) and ffmpeg use.
    pub const fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// Bytes of the authentication tag on each SRTP packet.
    pub const fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }

    /// Bytes of the authentication tag on each SRTCP packet (RFC 4568
    /// §6.2.2: 80 bits for both suites).
    pub const fn rtcp_tag_len(self) -> usize {
        10
    }

    /// Parses a suite name (case-insensitive).
    pub fn parse(name: &str) -> Result<Suite, Error> {
        Suite::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| Error::UnknownSuite(name.to_owned()))
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The master key and master salt of an SRTP session.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    key: [u8; MASTER_KEY_LEN],
    salt: [u8; MASTER_SALT_LEN],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(redacted)")
    }
}

/// Why the keying material or the suite cannot be used.
#[derive(Debug)]
pub enum Error {
    /// The key file cannot be opened or read.
    Open {
        path: PathBuf,
        err: std::io::Error,
    },
    /// The key file's mode lets group or others read it.
    Readable {
        path: PathBuf,
        mode: u32,
    },
    /// The key file holds nothing but whitespace.
    Empty {
        path: PathBuf,
    },
    /// The text is not 40 base64 characters; `path` is None for text
    /// given directly.
    Malformed {
        path: Option<PathBuf>,
        problem: &'static str,
    },
    UnknownSuite(String),
}

const HOW_TO_MAKE: &str = "make one with `head -c 30 /dev/urandom | base64 > FILE; \
                           chmod 600 FILE` or deploy/install.sh --srtp-key";

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open { path, err } => write!(
                f,
                "cannot read the SRTP key file {}: {err}; check --srtp-key-file (under \
                 systemd: LoadCredential= and ${{CREDENTIALS_DIRECTORY}}), or {HOW_TO_MAKE}",
                path.display()
            ),
            Error::Readable { path, mode } => write!(
                f,
                "the SRTP key file {} has mode {:04o}: group or others can read the key; \
                 `chmod 600 {}` (or pass it with systemd's LoadCredential=)",
                path.display(),
                mode & 0o7777,
                path.display()
            ),
            Error::Empty { path } => write!(
                f,
                "the SRTP key file {} is empty; {HOW_TO_MAKE}",
                path.display()
            ),
            Error::Malformed { path, problem } => {
                match path {
                    Some(p) => write!(f, "the SRTP key file {}: {problem}", p.display())?,
                    None => write!(f, "SRTP key: {problem}")?,
                }
                write!(
                    f,
                    "; it must hold the 40-character base64 master key and salt that ffmpeg's \
                     -srtp_out_params and SDP's a=crypto inline: use; {HOW_TO_MAKE}"
                )
            }
            Error::UnknownSuite(name) => write!(
                f,
                "--srtp-suite: '{name}' is not {} or {}",
                Suite::AesCm128HmacSha1_80.name(),
                Suite::AesCm128HmacSha1_32.name()
            ),
        }
    }
}

impl std::error::Error for Error {}

impl MasterKey {
    pub const fn new(key: [u8; MASTER_KEY_LEN], salt: [u8; MASTER_SALT_LEN]) -> MasterKey {
        MasterKey { key, salt }
    }

    pub fn key(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.key
    }

    pub fn salt(&self) -> &[u8; MASTER_SALT_LEN] {
        &self.salt
    }

    /// Parses the 40-character base64 text (whitespace around it allowed).
    pub fn parse(text: &str) -> Result<MasterKey, Error> {
        Self::parse_for(text, None)
    }

    fn parse_for(text: &str, path: Option<&Path>) -> Result<MasterKey, Error> {
        let malformed = |problem| Error::Malformed {
            path: path.map(Path::to_path_buf),
            problem,
        };
        let text = text.trim();
        if text.len() != KEY_TEXT_LEN {
            return Err(malformed("it is not 40 characters long"));
        }
        let mut raw = [0u8; MASTER_KEY_LEN + MASTER_SALT_LEN];
        match STANDARD.decode_slice(text, &mut raw) {
            Ok(n) if n == raw.len() => {}
            _ => return Err(malformed("it is not valid base64")),
        }
        let mut key = [0u8; MASTER_KEY_LEN];
        let mut salt = [0u8; MASTER_SALT_LEN];
        key.copy_from_slice(&raw[..MASTER_KEY_LEN]);
        salt.copy_from_slice(&raw[MASTER_KEY_LEN..]);
        Ok(MasterKey { key, salt })
    }

    /// Reads a key file: it must exist, be readable by its owner only and
    /// hold the base64 text.
    pub fn read_file(path: &Path) -> Result<MasterKey, Error> {
        let open = |err| Error::Open {
            path: path.to_path_buf(),
            err,
        };
        let file = std::fs::File::open(path).map_err(open)?;
        // The mode of the file that was opened, not of whatever the path
        // names a moment later.
        let meta = file.metadata().map_err(open)?;
        let mode = meta.permissions().mode();
        if mode & 0o044 != 0 {
            return Err(Error::Readable {
                path: path.to_path_buf(),
                mode,
            });
        }
        let mut text = String::new();
        file.take(MAX_FILE_LEN)
            .read_to_string(&mut text)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => Error::Malformed {
                    path: Some(path.to_path_buf()),
                    problem: "it is not text",
                },
                _ => open(e),
            })?;
        if text.trim().is_empty() {
            return Err(Error::Empty {
                path: path.to_path_buf(),
            });
        }
        Self::parse_for(&text, Some(path))
    }

    /// The base64 text, for an SDP `a=crypto` line.
    pub fn to_base64(&self) -> String {
        let mut raw = [0u8; MASTER_KEY_LEN + MASTER_SALT_LEN];
        raw[..MASTER_KEY_LEN].copy_from_slice(&self.key);
        raw[MASTER_KEY_LEN..].copy_from_slice(&self.salt);
        STANDARD.encode(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// 30 bytes 0..=29 in base64.
    const TEXT: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd";

    fn temp_file(name: &str, mode: u32, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netspeaker-srtp-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, contents).unwrap();
        // The umask may have taken bits away; set exactly what was asked.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn base64_text_gives_key_then_salt_and_back() {
        let k = MasterKey::parse(&format!("  {TEXT}\n")).unwrap();
        assert_eq!(k.key(), &core::array::from_fn(|i| i as u8));
        assert_eq!(k.salt(), &core::array::from_fn(|i| 16 + i as u8));
        assert_eq!(k.to_base64(), TEXT);
        assert_eq!(format!("{k:?}"), "MasterKey(redacted)");
    }

    #[test]
    fn malformed_text_rejected() {
        for bad in [
            "",
            &TEXT[..39],
            &format!("{TEXT}A"),
            &format!("{}!", &TEXT[..39]),
            "inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBk",
        ] {
            assert!(
                matches!(MasterKey::parse(bad), Err(Error::Malformed { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_file_owner_only_is_read() {
        let p = temp_file("good.key", 0o600, format!("{TEXT}\n").as_bytes());
        assert_eq!(MasterKey::read_file(&p).unwrap().to_base64(), TEXT);
        let p = temp_file("ro.key", 0o400, TEXT.as_bytes());
        assert!(MasterKey::read_file(&p).is_ok());
    }

    #[test]
    fn key_file_readable_by_others_refused() {
        for mode in [0o644, 0o640, 0o604] {
            let p = temp_file("open.key", mode, TEXT.as_bytes());
            let e = MasterKey::read_file(&p).unwrap_err();
            assert!(matches!(e, Error::Readable { .. }), "{mode:o}: {e}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
    }

    #[test]
    fn missing_empty_and_garbage_key_files_refused() {
        let e = MasterKey::read_file(Path::new("/nonexistent/srtp.key")).unwrap_err();
        assert!(matches!(e, Error::Open { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/srtp.key"), "{e}");
        let p = temp_file("empty.key", 0o600, b" \n");
        assert!(matches!(
            MasterKey::read_file(&p).unwrap_err(),
            Error::Empty { .. }
        ));
        let p = temp_file("bin.key", 0o600, &[0xff, 0xfe, 0x00, 0x80]);
        assert!(matches!(
            MasterKey::read_file(&p).unwrap_err(),
            Error::Malformed { .. }
        ));
        let p = temp_file("short.key", 0o600, b"c2VjcmV0Cg==\n");
        let e = MasterKey::read_file(&p).unwrap_err();
        assert!(e.to_string().contains("40-character base64"), "{e}");
    }

    #[test]
    fn suite_names_parse_both_ways() {
        for s in Suite::ALL {
            assert_eq!(Suite::parse(s.name()).unwrap(), s);
            assert_eq!(Suite::parse(&s.name().to_lowercase()).unwrap(), s);
        }
        assert_eq!(Suite::default(), Suite::AesCm128HmacSha1_80);
        let e = Suite::parse("AES_256_CM_HMAC_SHA1_80").unwrap_err();
        assert!(e.to_string().contains("AES_CM_128_HMAC_SHA1_32"), "{e}");
    }
}
