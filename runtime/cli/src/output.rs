//! What the commands print on standard output. A write that fails (a
//! reader gone, as in `| head -0`, or a full disk) is an error with its exit
//! code, never a panic as `println!` would give.

use std::io::Write as _;

use crate::error::CliError;

/// Writes `text` to standard output and flushes it.
pub fn write(text: std::fmt::Arguments<'_>) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(text).and_then(|()| out.flush()).map_err(CliError::Output)
}

/// `println!` that returns [`CliError::Output`] instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use say;
