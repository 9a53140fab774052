//! `llmembed`: the installable command line (`cargo install --path crates/llmembed`). The same
//! commands as `cargo xtask`, which is its in-repo alias; the code lives in the runner crate.

/// Product outputs on cache lines, so that AMX tiles store straight into them (see
/// `llmembed_kernels::LineAligned`), from mimalloc, which keeps freed pages for the next batch.
#[global_allocator]
static ALLOCATOR: llmembed_kernels::LineAligned = llmembed_kernels::LineAligned;

fn main() -> std::process::ExitCode {
    xtask::cli::main(xtask::cli::Binary::Llmembed)
}
