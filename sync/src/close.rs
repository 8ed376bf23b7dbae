//! The WebSocket close codes roomd uses, one table for every protocol (see `docs/protocol.md`).

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
    /// 4408: the client read too slowly and its outbox filled; reconnect to resync.
    TooSlow,
    /// 4413: a message, or the document it would grow, exceeds a size limit.
    TooLarge,
    /// 4429: the client sent messages faster than its rate limit.
    RateLimited,
    /// 4500: the server failed while handling the client's input; reconnect to resync.
    Internal,
    /// 4503: the server cannot take the connection now (a connection limit); try again later.
    TryAgain,
}

impl CloseCode {
    /// Every code, in table order.
    pub const ALL: [CloseCode; 10] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::Unauthorized,
        CloseCode::Forbidden,
        CloseCode::TooSlow,
        CloseCode::TooLarge,
        CloseCode::RateLimited,
        CloseCode::Internal,
        CloseCode::TryAgain,
    ];

    /// The numeric code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 4400,
            CloseCode::Unauthorized => 4401,
            CloseCode::Forbidden => 4403,
            CloseCode::TooSlow => 4408,
            CloseCode::TooLarge => 4413,
            CloseCode::RateLimited => 4429,
            CloseCode::Internal => 4500,
            CloseCode::TryAgain => 4503,
        }
    }

    /// The code for a number, if it is one of roomd's.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A short stable name, used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::Forbidden => "forbidden",
            CloseCode::TooSlow => "too_slow",
            CloseCode::TooLarge => "too_large",
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
        codes.dedup();
        assert_eq!(codes.len(), CloseCode::ALL.len());
    }
}
