//! Compiles the test echo service's proto with protox (no system protoc).

fn main() {
    let fds = protox::compile(["proto/echo.proto"], ["proto"]).expect("echo.proto compiles");
    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("generating the echo service");
    println!("cargo:rerun-if-changed=proto/echo.proto");
}
