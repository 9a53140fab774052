//! Standard output that a closed reader ends quietly: `cargo xtask status P | head -1` must exit
//! 0 when `head` stops reading, as Unix tools do, not panic as `println!` does on a broken pipe.

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};

/// Writes `args` to standard output; exits the process with status 0 if the reader is gone.
pub fn write(args: Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        panic!("write to standard output: {e}");
    }
}

/// `println!` for the runner's output, through [`write`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the runner's output, through [`write`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::write(format_args!($($arg)*))
    };
}
