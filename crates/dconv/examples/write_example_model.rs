//! Writes the example model to DIR/example.onnx: the seed of the model_plan fuzz target
//! (scripts/fuzz). `cargo run --release -p dconv --example write_example_model -- DIR`

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .expect("usage: write_example_model DIR");
    std::fs::write(
        std::path::Path::new(&dir).join("example.onnx"),
        dconv::runtime::example_model(),
    )
}
