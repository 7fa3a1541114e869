//! The `tally` binary: a thin shell over [`tally::cli`].

/// mimalloc rather than glibc's allocator: a cached `/balances` answer is mostly small,
/// short-lived allocations across worker threads, where it measured about 8% more throughput
/// (BENCHMARKS.md). The benchmark binary, which hosts tally in-process, declares the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tally::cli::main()
}
