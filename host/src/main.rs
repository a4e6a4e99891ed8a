//! The `switchboard` binary; everything lives in the library (`switchboard::cli`).

fn main() -> std::process::ExitCode {
    switchboard::cli::main()
}
