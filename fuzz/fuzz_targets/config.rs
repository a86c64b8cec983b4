//! Config parsing: any text either parses or is an error naming a line inside the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match isr::config::parse("isr.toml", text, &isr::config::Overrides::default()) {
        Ok(cfg) => assert!(cfg.cache.regen_concurrency >= 1),
        Err(e) => {
            let lines = text.lines().count().max(1);
            assert!(e.line <= lines + 1, "line {} of {lines}: {e}", e.line);
            assert!(!e.message.is_empty());
        }
    }
});
