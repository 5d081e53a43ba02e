//! The crate's error type.

use std::fmt;

use arrow_schema::ArrowError;

/// What went wrong, in a message that names the offset, field, fd or errno that failed.
#[derive(Clone, Debug)]
pub enum Error {
    /// A system call failed.
    Io {
        /// What was being done, e.g. `recvmsg(fd 5)`.
        context: String,
        /// The errno.
        errno: i32,
    },
    /// The peer broke the protocol (a malformed or unexpected message, a bad seal, a bad bound).
    Protocol(String),
    /// The producer sent an Error message, refused the handshake, or went away.
    Producer(String),
    /// Arrow could not read or validate what the producer wrote.
    Arrow {
        /// Which batch or message, and where it is.
        context: String,
        /// Arrow's message.
        message: String,
    },
    /// Nothing arrived within the time allowed.
    Timeout(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, errno: rustix::io::Errno) -> Self {
        Error::Io { context: context.into(), errno: errno.raw_os_error() }
    }

    pub(crate) fn arrow(context: impl Into<String>, source: ArrowError) -> Self {
        Error::Arrow { context: context.into(), message: source.to_string() }
    }

    /// The same error, its message starting with where it happened (e.g. `batch 7`).
    pub(crate) fn within(self, place: impl std::fmt::Display) -> Self {
        match self {
            Error::Io { context, errno } => {
                Error::Io { context: format!("{place}: {context}"), errno }
            }
            Error::Protocol(message) => Error::Protocol(format!("{place}: {message}")),
            Error::Producer(message) => Error::Producer(format!("{place}: {message}")),
            Error::Arrow { context, message } => {
                Error::Arrow { context: format!("{place}: {context}"), message }
            }
            Error::Timeout(message) => Error::Timeout(format!("{place}: {message}")),
        }
    }

    /// The errno of a failed system call, if that is what failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, errno } => {
                write!(f, "{context}: {}", std::io::Error::from_raw_os_error(*errno))
            }
            Error::Protocol(message) => write!(f, "protocol: {message}"),
            Error::Producer(message) => write!(f, "{message}"),
            Error::Arrow { context, message } => write!(f, "{context}: {message}"),
            Error::Timeout(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for ArrowError {
    fn from(error: Error) -> Self {
        ArrowError::ExternalError(Box::new(error))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
