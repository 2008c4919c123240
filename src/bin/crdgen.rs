//! Prints the CloudImage CRD as YAML: `cargo run --bin crdgen > crds/cloudimage.dev_cloudimages.yaml`.

fn main() -> std::process::ExitCode {
    match cloudimage_operator::crd::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot serialise the CRD: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
