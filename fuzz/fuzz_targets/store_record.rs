//! Stored metadata records: any bytes decode to metadata or an error, never a panic, and
//! whatever decodes encodes back to a record that decodes the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = isr::entry::Meta::from_bytes(data) {
        let again = isr::entry::Meta::from_bytes(&meta.to_bytes()).expect("re-encoded record");
        assert_eq!(again.to_bytes(), meta.to_bytes());
    }
});
