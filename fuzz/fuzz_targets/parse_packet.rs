//! Fuzz target: arbitrary datagrams into the packet parser, in RTP mode
//! (static types plus two dynamic ones) and in raw mode (the tutorial's
//! s16le 8 kHz mono, and a 6-byte-frame format so frame checks are not
//! only about even lengths). It must never panic; whatever it accepts is a
//! non-empty whole number of frames within MAX_PAYLOAD, copied unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netspeaker::audio::format::{Encoding, PayloadMap, StreamFormat};
use netspeaker::rtp::packet::{Packet, MAX_PAYLOAD, RAW_PAYLOAD_TYPE};
use netspeaker::rtp::{self, InputMode, PacketParser};

fn check_slot(slot: &Packet) {
    let len = slot.payload.len();
    let bpf = slot.format.bytes_per_frame();
    assert!(len > 0 && len <= MAX_PAYLOAD, "payload length {len}");
    assert!(
        bpf > 0 && len % bpf == 0,
        "{len} bytes is not whole {bpf}-byte frames"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut map = PayloadMap::default();
    map.set(
        96,
        StreamFormat {
            encoding: Encoding::L16,
            rate: 48_000,
            channels: 2,
        },
    );
    map.set(
        97,
        StreamFormat {
            encoding: Encoding::Pcma,
            rate: 16_000,
            channels: 3,
        },
    );
    let mut slot = Packet::empty(StreamFormat::TUTORIAL);

    let mut rtp_parser = PacketParser::new(InputMode::Rtp(map.clone()));
    if rtp_parser.parse_into(data, 1, &mut slot).is_ok() {
        check_slot(&slot);
        let (header, payload) = rtp::parse(data).expect("parser accepted what parse rejects");
        assert_eq!(slot.payload.as_slice(), payload);
        assert_eq!(slot.seq, header.sequence);
        assert_eq!(slot.timestamp, header.timestamp);
        assert_eq!(Some(slot.format), map.get(header.payload_type));
        assert!(!slot.sequential);
    }

    let tutorial = StreamFormat::TUTORIAL;
    let six = StreamFormat {
        encoding: Encoding::S16Le,
        rate: 8000,
        channels: 3,
    };
    for format in [tutorial, six] {
        let mut raw = PacketParser::new(InputMode::Raw(format));
        // Twice, so the parser's own numbering is exercised.
        for round in 0..2u16 {
            if raw.parse_into(data, 2, &mut slot).is_ok() {
                check_slot(&slot);
                assert_eq!(slot.payload.as_slice(), data);
                assert!(slot.sequential);
                assert_eq!(slot.payload_type, RAW_PAYLOAD_TYPE);
                assert_eq!(slot.seq, round);
                let frames = (data.len() / format.bytes_per_frame()) as u32;
                assert_eq!(slot.timestamp, u32::from(round) * frames);
            }
        }
    }

    // A header written for the sender always parses back to itself.
    if let Some((h, _)) = data.get(..12).and_then(|d| rtp::parse(d).ok()) {
        let plain = rtp::RtpHeader {
            csrc_count: 0,
            padding: false,
            extension: false,
            ..h
        };
        let mut out = [0u8; 12];
        if plain.write(&mut out).is_ok() {
            assert_eq!(rtp::parse(&out).map(|(h, _)| h), Ok(plain));
        }
    }
});
