//! Why an authenticated participant may not do what it asked.

/// Why a verified token does not allow a request. Messages name the missing grant only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    /// No room grant of the token names this room, exactly or as a prefix.
    #[error("the token is not for this room")]
    WrongRoom,
    /// The token has no `api` grant, so it may call no room API.
    #[error("the token has no api grant")]
    NoApiGrant,
    /// The token's API scope has no `sync` grant.
    #[error("the token may not sync documents")]
    NoSyncGrant,
    /// The `sync` grant lists paths and none of them matches the document.
    #[error("the token may not open this document")]
    PathNotGranted,
    /// The token's API scope has no `developer` grant.
    #[error("the token has no developer grant")]
    NoDeveloperGrant,
    /// The token's API scope has no `admin` grant.
    #[error("the token has no admin grant")]
    NoAdminGrant,
}

impl Forbidden {
    /// A short stable name for the reason, used as a metrics label.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::WrongRoom => "wrong_room",
            Self::NoApiGrant => "no_api_grant",
            Self::NoSyncGrant => "no_sync_grant",
            Self::PathNotGranted => "path_not_granted",
            Self::NoDeveloperGrant => "no_developer_grant",
            Self::NoAdminGrant => "no_admin_grant",
        }
    }
}
