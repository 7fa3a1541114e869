//! The `tally` binary: a thin shell over [`tally::cli`].

fn main() -> std::process::ExitCode {
    tally::cli::main()
}
