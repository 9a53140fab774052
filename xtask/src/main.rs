//! `cargo xtask`: the in-repo alias of `llmembed` (see `.cargo/config.toml`).

/// Product outputs on cache lines, so that AMX tiles store straight into them (see
/// `llmembed_kernels::LineAligned`), from mimalloc, which keeps freed pages for the next batch.
#[global_allocator]
static ALLOCATOR: llmembed_kernels::LineAligned = llmembed_kernels::LineAligned;

fn main() -> std::process::ExitCode {
    xtask::cli::main(xtask::cli::Binary::Xtask)
}
