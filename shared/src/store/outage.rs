//! Which PostgreSQL errors mean "the database cannot serve right now"
//! (answered `503` with `Retry-After`: the same request may succeed later)
//! rather than a fault of the request or of the code (`500`). Decided by
//! the error's kind and SQLSTATE, never by its text.

/// The error says the server is unreachable, restarting, shutting down,
/// out of connections or out of space, or that a standby cancelled a read
/// to replay the primary's changes.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| unavailable_sqlstate(&code)),
        _ => false,
    }
}

/// Whether any error in `error`'s chain is a [`is_unavailable`] one.
pub fn chain_is_unavailable(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(sqlx) = e.downcast_ref::<sqlx::Error>() {
            if is_unavailable(sqlx) {
                return true;
            }
        }
        if let Some(fault) = e.downcast_ref::<super::StoreFault>() {
            if is_unavailable(&fault.cause) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

fn unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources: disk full, out of memory, too many connections
        || matches!(
            code,
            "57P01" // admin_shutdown: a restart ended the session
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now: starting up or shutting down
                | "25006" // read_only_sql_transaction: a primary demoted to a standby
                | "40001" // serialization_failure: a standby cancelled a read (recovery conflict)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_and_exhaustion_are_unavailability_and_bad_data_is_not() {
        for code in [
            "08006", "08001", "57P01", "57P03", "53100", "53300", "40001",
        ] {
            assert!(unavailable_sqlstate(code), "{code}");
        }
        for code in ["23505", "22021", "54000", "42P01", "XX000", "57014"] {
            assert!(!unavailable_sqlstate(code), "{code}");
        }
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        #[derive(Debug, thiserror::Error)]
        #[error("loading a stream")]
        struct Loading(#[source] sqlx::Error);
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(chain_is_unavailable(&Loading(io)));
        assert!(!chain_is_unavailable(&Loading(sqlx::Error::RowNotFound)));
        let fault = super::super::StoreFault {
            doing: "appending",
            cause: sqlx::Error::PoolClosed,
        };
        assert!(chain_is_unavailable(&fault));
    }
}
