//! Compiles the gRPC API and writes the descriptor set that reflection serves.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/cotejo/v1/biometrics.proto", "proto/cotejo/v1/jobs.proto", "proto/cotejo/v1/audit.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("cotejo_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
