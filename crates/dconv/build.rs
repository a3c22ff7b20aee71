//! Generates the ONNX protobuf types from the vendored `proto/onnx.proto` with protox, a
//! pure-Rust protobuf compiler, so that building needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["proto"])?;
    // Tensor data as `Bytes`: decoded from a `Bytes` buffer, it is a view of the model
    // file rather than a second copy of every weight.
    prost_build::Config::new()
        .bytes([".onnx.TensorProto.raw_data"])
        .compile_fds(descriptors)?;
    Ok(())
}
