//! Fuzzes the ISO/IEC 19794-2:2005 parser: it must never panic, and whatever
//! it accepts must re-encode to the same bytes (up to reserved bits, which are
//! written as zero) and parse back to an equal record.

#![no_main]

#[allow(dead_code)]
#[path = "../../src/finger/iso19794_2.rs"]
mod iso19794_2;

use libfuzzer_sys::fuzz_target;

use iso19794_2::{HEADER_LEN, MINUTIA_LEN, VIEW_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(record) = iso19794_2::parse(data) else { return };

    let encoded = iso19794_2::write(&record).expect("a parsed record must re-encode");
    let reparsed = iso19794_2::parse(&encoded).expect("a re-encoded record must parse");
    assert_eq!(reparsed, record);
    assert_eq!(iso19794_2::write(&reparsed).as_deref(), Ok(&encoded[..]), "encoding is not canonical");

    // Lossless apart from reserved bits: same length, and the input only
    // differs in the reserved header byte and the top two bits of minutia y.
    assert_eq!(encoded.len(), data.len());
    let mut reserved_mask = vec![0u8; data.len()];
    reserved_mask[HEADER_LEN - 1] = 0xFF;
    let mut view_start = HEADER_LEN;
    for view in &record.views {
        for i in 0..view.minutiae.len() {
            reserved_mask[view_start + VIEW_HEADER_LEN + i * MINUTIA_LEN + 2] = 0xC0;
        }
        view_start += VIEW_HEADER_LEN + view.minutiae.len() * MINUTIA_LEN + 2 + view.extended.len();
    }
    assert_eq!(view_start, data.len());
    for (i, ((&got, &want), &mask)) in encoded.iter().zip(data).zip(&reserved_mask).enumerate() {
        assert_eq!(got & !mask, want & !mask, "byte {i} changed on re-encoding");
        assert_eq!(got & mask, 0, "reserved bits at byte {i} not written as zero");
    }
});
