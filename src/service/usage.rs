//! Bad command lines, the same way in both programs: one line on stderr
//! naming the option, the value and what is accepted, a pointer to
//! `--help`, exit status 2 (1 stays for failures at run time, 0 for a
//! clean stop).
//!
//! The helpers read an option's value from the parser (`lexopt`) and check
//! it, so that every message names its option: [`number`] for a number in
//! a range, [`text`] for a value that must be valid UTF-8.

use core::fmt;
use std::ops::RangeInclusive;
use std::process::ExitCode;

/// Exit status for a bad command line (the convention of getopt-based
/// tools and of both programs since their first release).
pub const EXIT_USAGE: u8 = 2;

/// A bad command line.
#[derive(Debug)]
pub enum Error {
    /// A value that is not a number, or one outside its range.
    Range {
        option: String,
        value: String,
        /// What the number is, with its article ("a number", "a priority").
        what: &'static str,
        low: String,
        high: String,
    },
    /// A value of the wrong form; `problem` says what is wrong and what
    /// would be right.
    Value { option: String, problem: String },
    /// The parser's own complaint: an unknown option, a missing value.
    Parser(lexopt::Error),
    /// Options that do not go together, a missing argument, an extra one.
    Rule(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Range {
                option,
                value,
                what,
                low,
                high,
            } => write!(f, "{option}: '{value}' is not {what} from {low} to {high}"),
            Error::Value { option, problem } => write!(f, "{option}: {problem}"),
            Error::Parser(e) => write!(f, "{e}"),
            Error::Rule(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for Error {}

impl From<lexopt::Error> for Error {
    fn from(e: lexopt::Error) -> Error {
        Error::Parser(e)
    }
}

impl Error {
    /// A value of the wrong form for `option`.
    pub fn value(option: &str, problem: impl Into<String>) -> Error {
        Error::Value {
            option: option.to_owned(),
            problem: problem.into(),
        }
    }

    /// A rule about several options or arguments.
    pub fn rule(text: impl Into<String>) -> Error {
        Error::Rule(text.into())
    }

    /// The usage-error exit: `program: message (see --help)` on stderr,
    /// status 2.
    pub fn exit(&self, program: &str) -> ExitCode {
        eprintln!("{program}: {self} (see --help)");
        ExitCode::from(EXIT_USAGE)
    }
}

/// `value` as a number within `range`.
pub fn number<T>(option: &str, value: &str, range: RangeInclusive<T>) -> Result<T, Error>
where
    T: std::str::FromStr + PartialOrd + fmt::Display,
{
    quantity(option, value, range, "a number")
}

/// Like [`number`], with the message naming what the number is
/// ("--rt-priority: '100' is not a priority from 0 to 99").
pub fn quantity<T>(
    option: &str,
    value: &str,
    range: RangeInclusive<T>,
    what: &'static str,
) -> Result<T, Error>
where
    T: std::str::FromStr + PartialOrd + fmt::Display,
{
    match value.parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(Error::Range {
            option: option.to_owned(),
            value: value.to_owned(),
            what,
            low: range.start().to_string(),
            high: range.end().to_string(),
        }),
    }
}

/// The next value from `parser`, for `option`, as text.
pub fn text(parser: &mut lexopt::Parser, option: &str) -> Result<String, Error> {
    parser
        .value()?
        .into_string()
        .map_err(|_| Error::value(option, "the value is not valid UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_in_range_accepted() {
        assert_eq!(number::<u32>("--period-ms", "5", 1..=100).unwrap(), 5);
        assert_eq!(number::<u32>("--period-ms", "100", 1..=100).unwrap(), 100);
        assert_eq!(number::<i32>("--rt-priority", "0", 0..=99).unwrap(), 0);
    }

    #[test]
    fn number_out_of_range_names_option_and_range() {
        let e = number::<u32>("--period-ms", "0", 1..=100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--period-ms: '0' is not a number from 1 to 100"
        );
    }

    #[test]
    fn not_a_number_or_too_big_for_the_type_is_a_range_error() {
        let e = number::<u8>("--ttl", "300", 0..=255).unwrap_err();
        assert_eq!(e.to_string(), "--ttl: '300' is not a number from 0 to 255");
        let e = number::<u32>("--ptime", "ten", 1..=200).unwrap_err();
        assert!(matches!(e, Error::Range { .. }));
        assert!(number::<u32>("--ptime", "-1", 1..=200).is_err());
    }

    #[test]
    fn quantity_names_what_is_expected() {
        let e = quantity::<u8>(
            "--payload-type",
            "12",
            96..=127,
            "a dynamic RTP payload type",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--payload-type: '12' is not a dynamic RTP payload type from 96 to 127"
        );
    }

    #[test]
    fn text_reads_the_value_and_parser_errors_pass_through() {
        let mut p = lexopt::Parser::from_args(["--device", "hw:1,0"]);
        assert!(matches!(p.next(), Ok(Some(lexopt::Arg::Long("device")))));
        assert_eq!(text(&mut p, "--device").unwrap(), "hw:1,0");

        let mut p = lexopt::Parser::from_args(["--device"]);
        assert!(matches!(p.next(), Ok(Some(lexopt::Arg::Long("device")))));
        let e = text(&mut p, "--device").unwrap_err();
        assert!(matches!(e, Error::Parser(_)));
        assert!(e.to_string().contains("--device"), "{e}");
    }

    #[test]
    fn value_and_rule_messages() {
        assert_eq!(
            Error::value("--access", "'dma' is neither rw nor mmap").to_string(),
            "--access: 'dma' is neither rw nor mmap"
        );
        assert_eq!(
            Error::rule("no input: give a WAV file").to_string(),
            "no input: give a WAV file"
        );
    }
}
