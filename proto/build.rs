//! Compiles the protos with protox (a Rust protobuf compiler), so building
//! needs no system protoc.

fn main() {
    let protos = [
        "weft/discovery/v1/discovery.proto",
        "weft/identity/v1/identity.proto",
    ];
    let fds = protox::compile(protos, ["."]).expect("protos compile");
    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("generating Rust from the protos");
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
}
