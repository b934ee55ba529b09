//! `criu`: upstream's command line over the engine.
#![forbid(unsafe_code)]

fn main() {
    let code = engine::cli::main(std::env::args_os().collect());
    std::process::exit(code);
}
