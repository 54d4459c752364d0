//! File source. Input: a WAV file, a raw PCM file (`--format`), or either
//! on standard input (`-`). Output: interleaved `i16` frames in the source's
//! own format, as many as asked for, until the end. Policy: `--loop` seeks
//! back to the first sample at the end of a file (not possible on standard
//! input, refused at open); a partial frame at the end is dropped; a WAV
//! file shorter than its header says ends early and is reported by
//! `truncated()`. Buffers are sized in `open`; `read` does not allocate.

use core::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::audio::codec;
use crate::audio::format::StreamFormat;
use crate::send::wav;

/// Where the samples come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    File(PathBuf),
    Stdin,
}

impl Input {
    /// `-` is standard input, anything else a path.
    pub fn from_arg(arg: &str) -> Input {
        if arg == "-" {
            Input::Stdin
        } else {
            Input::File(PathBuf::from(arg))
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::File(p) => write!(f, "{}", p.display()),
            Input::Stdin => write!(f, "standard input"),
        }
    }
}

#[derive(Debug)]
pub enum Error {
    Open { path: PathBuf, err: io::Error },
    Wav { input: String, err: wav::Error },
    Read { input: String, err: io::Error },
    LoopStdin,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Open { path, err } => {
                write!(f, "cannot open {}: {err}", path.display())
            }
            Error::Wav { input, err } => write!(f, "{input}: {err}"),
            Error::Read { input, err } => write!(f, "reading {input} failed: {err}"),
            Error::LoopStdin => write!(f, "--loop needs a file: standard input cannot be rewound"),
        }
    }
}

impl std::error::Error for Error {}

enum Reader {
    File(BufReader<File>),
    Stdin(io::Stdin),
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Reader::File(f) => f.read(buf),
            Reader::Stdin(s) => s.read(buf),
        }
    }
}

/// A file or standard input, decoded to `i16` frames.
pub struct FileSource {
    input: Input,
    reader: Reader,
    format: StreamFormat,
    data_offset: u64,
    data_len: Option<u64>,
    /// Bytes of samples left before the end the header declared.
    remaining: Option<u64>,
    looping: bool,
    truncated: bool,
    bytes: Vec<u8>,
}

impl FileSource {
    /// Opens `input`. With `raw` the input is headerless PCM in that
    /// format; without, it must be a WAV file. `max_frames` is the most
    /// `read` will be asked for at once.
    pub fn open(
        input: &Input,
        raw: Option<StreamFormat>,
        looping: bool,
        max_frames: usize,
    ) -> Result<FileSource, Error> {
        let name = input.to_string();
        let mut reader = match input {
            Input::File(p) => Reader::File(BufReader::new(open_file(p)?)),
            Input::Stdin if looping => return Err(Error::LoopStdin),
            Input::Stdin => Reader::Stdin(io::stdin()),
        };
        let (format, data_offset, data_len) = match raw {
            Some(f) => (f, 0, None),
            None => {
                let info = wav::read_header(&mut reader).map_err(|err| Error::Wav {
                    input: name.clone(),
                    err,
                })?;
                (info.format, info.data_offset, info.data_len)
            }
        };
        let bytes = vec![0u8; max_frames.max(1) * format.bytes_per_frame()];
        Ok(FileSource {
            input: input.clone(),
            reader,
            format,
            data_offset,
            data_len,
            remaining: data_len,
            looping,
            truncated: false,
            bytes,
        })
    }

    /// The source's own format (rate and channels before conversion).
    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Whether the WAV data ended before the length its header declared.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Fills `out` with up to `out.len() / channels` frames (at most the
    /// `max_frames` given to `open`) and returns the frames read; 0 means
    /// the end of the input, or that `stop` was set while standard input
    /// had nothing to read (a pipe can stay silent for ever).
    pub fn read(&mut self, out: &mut [i16], stop: &AtomicBool) -> Result<usize, Error> {
        let bpf = self.format.bytes_per_frame();
        let channels = usize::from(self.format.channels);
        let want = (out.len() / channels).min(self.bytes.len() / bpf) * bpf;
        let mut got = 0;
        let mut rewound_empty = false;
        while got < want {
            let limit = match self.remaining {
                Some(r) => (want - got).min(usize::try_from(r).unwrap_or(usize::MAX)),
                None => want - got,
            };
            let n = if limit == 0 {
                0
            } else if !self.readable(stop)? {
                break;
            } else {
                match self.reader.read(&mut self.bytes[got..got + limit]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        return Err(Error::Read {
                            input: self.input.to_string(),
                            err,
                        })
                    }
                }
            };
            if n == 0 {
                if limit != 0 && self.remaining.is_some() {
                    self.truncated = true;
                }
                // A file with no samples at all must not loop for ever.
                if !self.looping || rewound_empty {
                    break;
                }
                self.rewind()?;
                rewound_empty = got == 0;
                continue;
            }
            rewound_empty = false;
            got += n;
            if let Some(r) = self.remaining.as_mut() {
                *r -= n as u64;
            }
        }
        let frames = got / bpf;
        // Raw files can hold any of the encodings; WAV is always s16le.
        codec::decode(
            self.format.encoding,
            &self.bytes[..frames * bpf],
            &mut out[..frames * channels],
        );
        Ok(frames)
    }

    /// Waits until the input can be read; false when `stop` was set
    /// first. Files are always readable; standard input is polled, because
    /// the signal handlers restart a blocking read (SA_RESTART) and a stop
    /// would wait for the next byte.
    fn readable(&self, stop: &AtomicBool) -> Result<bool, Error> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let Reader::Stdin(stdin) = &self.reader else {
            return Ok(true);
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
            // Bounded, so a signal that lands just before poll is seen
            // within 200 ms.
            match poll(&mut fds, PollTimeout::from(200u8)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => return Ok(true),
                Err(e) => {
                    return Err(Error::Read {
                        input: self.input.to_string(),
                        err: io::Error::from_raw_os_error(e as i32),
                    })
                }
            }
        }
    }

    fn rewind(&mut self) -> Result<(), Error> {
        if let Reader::File(f) = &mut self.reader {
            f.seek(SeekFrom::Start(self.data_offset))
                .map_err(|err| Error::Read {
                    input: self.input.to_string(),
                    err,
                })?;
        }
        self.remaining = self.data_len;
        Ok(())
    }
}

fn open_file(p: &Path) -> Result<File, Error> {
    File::open(p).map_err(|err| Error::Open {
        path: p.to_path_buf(),
        err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::format::{parse_raw, Encoding};

    fn temp(name: &str, bytes: &[u8]) -> Input {
        let dir = std::env::temp_dir().join(format!("ns-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        Input::File(p)
    }

    fn read_all(src: &mut FileSource, chunk: usize, limit: usize) -> Vec<i16> {
        let ch = usize::from(src.format().channels);
        let mut buf = vec![0i16; chunk * ch];
        let mut all = Vec::new();
        while all.len() < limit {
            let n = src.read(&mut buf, &AtomicBool::new(false)).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n * ch]);
        }
        all
    }

    #[test]
    fn wav_file_samples_in_order() {
        let samples: Vec<i16> = (0..1001).map(|i| (i * 37 - 9000) as i16).collect();
        let input = temp("stereo.wav", &wav::write_wav(22_050, 1, &samples));
        let mut src = FileSource::open(&input, None, false, 64).unwrap();
        assert_eq!(src.format().rate, 22_050);
        assert_eq!(read_all(&mut src, 64, usize::MAX), samples);
        assert!(!src.truncated());
    }

    #[test]
    fn wav_trailing_chunk_not_played() {
        let mut w = wav::write_wav(8000, 2, &[1, 2, 3, 4]);
        w.extend_from_slice(b"LIST\x02\0\0\0ab");
        let input = temp("trailer.wav", &w);
        let mut src = FileSource::open(&input, None, false, 16).unwrap();
        assert_eq!(read_all(&mut src, 16, usize::MAX), [1, 2, 3, 4]);
    }

    #[test]
    fn truncated_data_ends_early_and_says_so() {
        let w = wav::write_wav(8000, 1, &[5; 100]);
        let input = temp("cut.wav", &w[..44 + 50]);
        let mut src = FileSource::open(&input, None, false, 16).unwrap();
        assert_eq!(read_all(&mut src, 16, usize::MAX).len(), 25);
        assert!(src.truncated());
    }

    #[test]
    fn raw_file_with_partial_last_frame() {
        let mut bytes = Vec::new();
        for s in [1i16, -1, 300, -300, 7] {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        bytes.push(0xAB); // half a sample
        let input = temp("stereo.raw", &bytes);
        let f = parse_raw("s16le:8000:2").unwrap();
        let mut src = FileSource::open(&input, Some(f), false, 4).unwrap();
        assert_eq!(read_all(&mut src, 4, usize::MAX), [1, -1, 300, -300]);
    }

    #[test]
    fn raw_ulaw_is_decoded() {
        let input = temp("u.raw", &[0xFF, 0x80, 0x00]);
        let f = parse_raw("ulaw:8000:1").unwrap();
        let mut src = FileSource::open(&input, Some(f), false, 8).unwrap();
        assert_eq!(src.format().encoding, Encoding::Pcmu);
        assert_eq!(read_all(&mut src, 8, usize::MAX), [0, 32124, -32124]);
    }

    #[test]
    fn loop_repeats_the_data_only() {
        let input = temp("loop.wav", &wav::write_wav(8000, 1, &[1, 2, 3]));
        let mut src = FileSource::open(&input, None, true, 2).unwrap();
        assert_eq!(read_all(&mut src, 2, 8), [1, 2, 3, 1, 2, 3, 1, 2]);
    }

    #[test]
    fn loop_of_empty_file_ends() {
        let input = temp("empty.wav", &wav::write_wav(8000, 1, &[]));
        let mut src = FileSource::open(&input, None, true, 2).unwrap();
        assert_eq!(read_all(&mut src, 2, 8), Vec::<i16>::new());
    }

    #[test]
    fn loop_stdin_refused_and_missing_file_named() {
        assert!(matches!(
            FileSource::open(&Input::Stdin, None, true, 8),
            Err(Error::LoopStdin)
        ));
        let e = FileSource::open(&Input::from_arg("/nonexistent/x.wav"), None, false, 8)
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/x.wav"), "{e}");
    }

    #[test]
    fn not_wav_without_format() {
        let input = temp("noise.raw", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
        let e = FileSource::open(&input, None, false, 8).err().unwrap();
        assert!(matches!(
            e,
            Error::Wav {
                err: wav::Error::NotWav,
                ..
            }
        ));
        assert!(e.to_string().contains("--format"), "{e}");
    }
}
