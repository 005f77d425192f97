//! The `vmbuild` binary: everything happens in `vmbuild::cli`, which maps the outcome to
//! an exit code.

fn main() {
    std::process::exit(vmbuild::cli::main());
}
