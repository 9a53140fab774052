//! `cargo xtask`: the in-repo alias of `llmembed` (see `.cargo/config.toml`).

fn main() -> std::process::ExitCode {
    xtask::cli::main(xtask::cli::Binary::Xtask)
}
