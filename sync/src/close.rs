//! The WebSocket close codes roomd uses, one table for every protocol (see `docs/protocol.md`).
//!
//! The bands follow the convention stock y-websocket providers (3.x) implement: 4400–4499 is
//! final (reconnecting gives the same answer until the application acts, so the provider stops
//! and tells the application why), 4500–4599 and everything else is transient (the provider
//! reconnects with backoff and resyncs). A condition that passes must never get a 44xx code, or
//! an editor goes offline for good.

/// Why roomd closes a connection. The numeric values are part of the public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the conversation ended normally.
    Normal,
    /// 1001: the server is shutting down; reconnect later.
    GoingAway,
    /// 4400: the client sent bytes that are not a valid message of the protocol.
    ProtocolError,
    /// 4401: the request carried no valid credentials.
    Unauthorized,
    /// 4403: the credentials do not allow this operation.
    Forbidden,
    /// 4410: the room or document was deleted.
    Deleted,
    /// 4413: a message, or the document it would grow, exceeds a size limit.
    TooLarge,
    /// 4429: the client's address made too many failed authentication attempts.
    TooManyFailures,
    /// 4500: the server failed while handling the client's input; reconnect to resync.
    Internal,
    /// 4503: the server cannot take the connection now (a connection limit); try again later.
    TryAgain,
    /// 4508: the client read too slowly and its outbox filled; reconnect to resync.
    TooSlow,
    /// 4529: the client kept sending faster than its rate limit, even throttled; reconnect
    /// with backoff.
    RateLimited,
}

impl CloseCode {
    /// Every code, in table order.
    pub const ALL: [CloseCode; 12] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::Unauthorized,
        CloseCode::Forbidden,
        CloseCode::Deleted,
        CloseCode::TooLarge,
        CloseCode::TooManyFailures,
        CloseCode::Internal,
        CloseCode::TryAgain,
        CloseCode::TooSlow,
        CloseCode::RateLimited,
    ];

    /// The numeric code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 4400,
            CloseCode::Unauthorized => 4401,
            CloseCode::Forbidden => 4403,
            CloseCode::Deleted => 4410,
            CloseCode::TooLarge => 4413,
            CloseCode::TooManyFailures => 4429,
            CloseCode::Internal => 4500,
            CloseCode::TryAgain => 4503,
            CloseCode::TooSlow => 4508,
            CloseCode::RateLimited => 4529,
        }
    }

    /// The code for a number, if it is one of roomd's.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// True when a stock provider should not reconnect: the 4400–4499 band.
    pub fn is_final(self) -> bool {
        (4400..4500).contains(&self.code())
    }

    /// A short stable name, used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::Forbidden => "forbidden",
            CloseCode::Deleted => "deleted",
            CloseCode::TooLarge => "too_large",
            CloseCode::TooManyFailures => "too_many_failures",
            CloseCode::TooSlow => "too_slow",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::Internal => "internal",
            CloseCode::TryAgain => "try_again",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        let mut codes: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CloseCode::ALL.len());
    }

    #[test]
    fn conditions_that_pass_are_never_final() {
        for c in [
            CloseCode::GoingAway,
            CloseCode::Internal,
            CloseCode::TryAgain,
            CloseCode::TooSlow,
            CloseCode::RateLimited,
        ] {
            assert!(!c.is_final(), "{c:?}");
        }
        for c in [
            CloseCode::ProtocolError,
            CloseCode::Unauthorized,
            CloseCode::Forbidden,
            CloseCode::Deleted,
            CloseCode::TooLarge,
            CloseCode::TooManyFailures,
        ] {
            assert!(c.is_final(), "{c:?}");
        }
    }
}
