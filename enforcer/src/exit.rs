//! Exit codes and the errors that choose them: 0 ok, 1 user or config error, 2 runtime failure
//! (docs/architecture.md, "Command line"). Shared by every command, the daemon included, so
//! that whether a failure is the user's to fix is decided where it happens.

/// An error together with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Bad input: config, arguments, files, a policy larger than the configured maps. Exit 1.
    #[error("{0:#}")]
    User(anyhow::Error),
    /// The system did not cooperate: kernel, permissions, I/O. Exit 2.
    #[error("{0:#}")]
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Self::User(_) => 1,
            Self::Runtime(_) => 2,
        }
    }
}

pub trait OrFailure<T> {
    fn user(self) -> Result<T, Failure>;
    fn runtime(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrFailure<T> for Result<T, E> {
    fn user(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::User(e.into()))
    }

    fn runtime(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::Runtime(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_kind_and_the_cause_is_kept() {
        let io = std::io::Error::from_raw_os_error(libc::ENOMEM);
        let f = Err::<(), _>(io).runtime().unwrap_err();
        assert_eq!(f.code(), 2);
        assert!(f.to_string().contains("memory"), "{f}");
        assert_eq!(
            Err::<(), _>(anyhow::anyhow!("bad"))
                .user()
                .unwrap_err()
                .code(),
            1
        );
    }
}
