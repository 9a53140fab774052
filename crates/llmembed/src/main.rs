//! `llmembed`: the installable command line (`cargo install --path crates/llmembed`). The same
//! commands as `cargo xtask`, which is its in-repo alias; the code lives in the runner crate.

fn main() -> std::process::ExitCode {
    xtask::cli::main(xtask::cli::Binary::Llmembed)
}
