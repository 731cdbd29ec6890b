//! Compiles the destination proto with protox (no system protoc), then tonic's code generator.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/meshwork/destination/v1/destination.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
