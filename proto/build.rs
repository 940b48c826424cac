//! Compiles the .proto files with protox (pure Rust), so a build needs no protoc binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["control.proto", "peer.proto", "record.proto", "hub.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        // JSON output of `tandemctl --json` mirrors the control messages one to one.
        .type_attribute(".tandem.control", "#[derive(serde::Serialize)]")
        // A small file's content arrives inline: kept as a slice of the received frame, not
        // copied out of it.
        .bytes(".tandem.peer.v1.FileBody.inline")
        .compile_fds(fds)?;
    Ok(())
}
