//! Where the commands' output goes: standard output and standard error, and a copy of both in
//! the run log (`--log FILE`, by default `results/<pipeline>/run.log` for `run`).
//!
//! Standard output that a closed reader ends quietly: `llmembed status P | head -1` must exit 0
//! when `head` stops reading, as Unix tools do, not panic as `println!` does on a broken pipe.
//! Messages (progress lines, warnings, errors) go through the `log` crate to standard error, so
//! the stage crates need to know nothing about terminals or log files.

use std::fmt::Arguments;
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::Path;
use std::sync::Mutex;

/// The open run log, if any. Both streams append to it, a whole line at a time.
static RUN_LOG: Mutex<Option<File>> = Mutex::new(None);

fn to_run_log(bytes: &[u8]) {
    if let Some(file) = RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        // A full disk must not stop the run whose output it is; the terminal still has it.
        let _ = file.write_all(bytes);
    }
}

/// Starts copying all output to `path` (created, or truncated), until [`stop_run_log`].
pub fn start_run_log(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = File::create(path)?;
    *RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Ok(())
}

/// Stops copying output to the run log, flushing it to disk.
pub fn stop_run_log() {
    if let Some(file) = RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = file.sync_all();
    }
}

/// Writes `args` to standard output (and the run log); exits the process with status 0 if the
/// reader is gone.
pub fn write(args: Arguments<'_>) {
    let text = args.to_string();
    to_run_log(text.as_bytes());
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        panic!("write to standard output: {e}");
    }
}

/// Standard error, copied to the run log: the logger's target.
struct StderrTee;

impl Write for StderrTee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        to_run_log(buf);
        // A closed standard error is no reason to stop a run; its log still has the line.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Installs the logger: `info` and above from this project's crates (`warn` and above from
/// dependencies), `RUST_LOG` overriding; warnings and errors prefixed as compilers print them.
pub fn init_logger() {
    let env = env_logger::Env::default().default_filter_or("warn,xtask=info,llmembed=info");
    env_logger::Builder::from_env(env)
        .format(|buf, record| match record.level() {
            log::Level::Error => writeln!(buf, "error: {}", record.args()),
            log::Level::Warn => writeln!(buf, "warning: {}", record.args()),
            _ => writeln!(buf, "{}", record.args()),
        })
        .target(env_logger::Target::Pipe(Box::new(StderrTee)))
        .init();
}

/// `println!` for the runner's output, through [`write`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::console::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the runner's output, through [`write`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::console::write(format_args!($($arg)*))
    };
}
