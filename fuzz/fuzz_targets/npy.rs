//! Fuzz target: arbitrary bytes as a `.npy` file must decode or fail with an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = dconv::io::npy::decode_npy(bytes);
});
