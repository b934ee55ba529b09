//! crit: CRIU image tool (decode, encode, info, show, x), compatible with
//! upstream crit 4.2's command line and output.

fn main() {
    std::process::exit(tools::cli::main());
}
