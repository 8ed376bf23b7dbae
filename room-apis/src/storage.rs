//! The room's file storage, as far as it is semantics: which paths exist, and what a token's
//! `storage` grant allows on each.
//!
//! **Paths** are the MeshAgent SDK's: relative, `/`-separated, no empty segment, no `.` or
//! `..`, no backslash, no control character (nor the C1 range), and none of the names the SDK
//! keeps for itself (`.meshagent-directory`, `.meshagent-upload-*`). A request's path may carry
//! the aliases the SDK still accepts (leading `./`, leading and trailing `/`, `.` for the root),
//! which [`request_path`] removes. roomd bounds them further: at most [`PATH_MAX_BYTES`] bytes,
//! [`SEGMENT_MAX_BYTES`] per segment and [`DEPTH_MAX`] segments. The root is the empty path.
//!
//! **Permissions** follow the SDK's `FilesPolicy`: rules, each a path (the rule's subtree when
//! `recursive`), the actions it allows (`list`, `read`, `write`, `delete`, `presign`) and the
//! subtrees it excludes. A path is matched by segment (`data` covers `data/x`, not
//! `database`). A grant's `files` policy, when present, is the policy; otherwise its legacy
//! `paths` become rules in order, each excluding the paths before it, so that the first entry
//! that covers a path decides it: read-only entries allow `list` and `read`, others also
//! `write` and `delete`, and none `presign`. No `paths` at all allows everything but `presign`;
//! an empty list allows nothing.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::scope::StorageGrant;

/// The longest path, in bytes.
pub const PATH_MAX_BYTES: usize = 1024;
/// The longest segment of a path, in bytes.
pub const SEGMENT_MAX_BYTES: usize = 255;
/// The most segments a path has.
pub const DEPTH_MAX: usize = 32;
/// The most rules a policy holds, and excluded paths a rule holds (the SDK's bounds).
pub const RULES_MAX: usize = 1000;

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not a canonical relative path.
    #[error("{0}: a storage path is relative, with no empty, `.` or `..` segment, no backslash and no control character")]
    NotCanonical(String),
    /// A name the SDK keeps for itself.
    #[error("{0}: names starting `.meshagent-` are reserved")]
    Reserved(String),
    /// Past a bound.
    #[error("storage paths are at most {PATH_MAX_BYTES} bytes, {DEPTH_MAX} segments and {SEGMENT_MAX_BYTES} bytes a segment")]
    TooLong,
}

fn shown(path: &str) -> String {
    let mut s: String = path.chars().take(64).collect();
    s = s.escape_debug().to_string();
    if path.chars().count() > 64 {
        s.push('…');
    }
    s
}

/// Checks that `path` is a canonical storage path (the root is `""`).
pub fn validate(path: &str) -> Result<(), PathError> {
    if path.len() > PATH_MAX_BYTES {
        return Err(PathError::TooLong);
    }
    if path.is_empty() {
        return Ok(());
    }
    let bad_char = |c: char| c == '\\' || (c as u32) < 32 || (127..160).contains(&(c as u32));
    if path.starts_with('/') || path.chars().any(bad_char) {
        return Err(PathError::NotCanonical(shown(path)));
    }
    let mut depth = 0;
    for segment in path.split('/') {
        depth += 1;
        if matches!(segment, "" | "." | "..") {
            return Err(PathError::NotCanonical(shown(path)));
        }
        if segment == ".meshagent-directory" || segment.starts_with(".meshagent-upload-") {
            return Err(PathError::Reserved(shown(path)));
        }
        if segment.len() > SEGMENT_MAX_BYTES {
            return Err(PathError::TooLong);
        }
    }
    if depth > DEPTH_MAX {
        return Err(PathError::TooLong);
    }
    Ok(())
}

/// The canonical path a request names: leading `./` and leading and trailing `/` removed, `.`
/// the root; then [`validate`]d.
pub fn request_path(raw: &str) -> Result<String, PathError> {
    if raw.len() > PATH_MAX_BYTES + 64 {
        return Err(PathError::TooLong);
    }
    let mut path = raw;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    let path = path.trim_matches('/');
    let path = if path == "." { "" } else { path };
    validate(path)?;
    Ok(path.to_owned())
}

/// The folder holding `path` (the root for a top-level name); `None` for the root.
pub fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(path.rsplit_once('/').map_or("", |(p, _)| p))
}

/// The last segment of `path` (`""` for the root).
pub fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

/// Whether `path` is `parent` or under it (everything is under the root).
pub fn covers(parent: &str, path: &str) -> bool {
    path == parent || descendant(parent, path)
}

/// Whether `path` is strictly under `parent`.
fn descendant(parent: &str, path: &str) -> bool {
    parent.is_empty() && !path.is_empty()
        || path.len() > parent.len()
            && path.starts_with(parent)
            && path.as_bytes()[parent.len()] == b'/'
}

/// What a rule may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// See that a path exists, and what a folder holds.
    List,
    /// Read a file.
    Read,
    /// Create or replace a file.
    Write,
    /// Remove a file or folder.
    Delete,
    /// Hand out a signed URL to a file.
    Presign,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::List => "list",
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Presign => "presign",
        })
    }
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    path: String,
    recursive: bool,
    actions: Vec<Action>,
    excluded: Vec<String>,
}

impl Rule {
    /// Whether the rule allows `action` on `path`, and on everything under it when `subtree`.
    pub fn allows(&self, action: Action, path: &str, subtree: bool) -> bool {
        if !self.actions.contains(&action) || (subtree && !self.recursive) {
            return false;
        }
        if path != self.path && !(self.recursive && descendant(&self.path, path)) {
            return false;
        }
        !self
            .excluded
            .iter()
            .any(|e| covers(e, path) || (subtree && descendant(path, e)))
    }
}

/// Why a grant's policy cannot be read: the grant then allows nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token's storage grant is malformed: {0}")]
pub struct PolicyError(String);

/// What a token's `storage` grant allows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesPolicyWire {
    #[serde(default)]
    paths: Vec<FileRuleWire>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRuleWire {
    path: String,
    recursive: bool,
    actions: Vec<Action>,
    #[serde(default)]
    excluded_paths: Vec<String>,
}

impl Policy {
    /// The policy of `grant`: its `files` policy when it has one, its legacy `paths`
    /// otherwise (see the module's notes).
    pub fn of_grant(grant: &StorageGrant) -> Result<Policy, PolicyError> {
        if let Some(files) = &grant.files {
            return Policy::of_files(files);
        }
        let Some(paths) = &grant.paths else {
            return Ok(Policy {
                rules: vec![Rule {
                    path: String::new(),
                    recursive: true,
                    actions: vec![Action::List, Action::Read, Action::Write, Action::Delete],
                    excluded: Vec::new(),
                }],
            });
        };
        if paths.len() > RULES_MAX {
            return Err(PolicyError(format!("more than {RULES_MAX} paths")));
        }
        let mut rules = Vec::with_capacity(paths.len());
        let mut before: Vec<String> = Vec::new();
        for p in paths {
            let path = p.path.trim_matches('/').to_owned();
            validate(&path).map_err(|e| PolicyError(e.to_string()))?;
            let actions = if p.read_only {
                vec![Action::List, Action::Read]
            } else {
                vec![Action::List, Action::Read, Action::Write, Action::Delete]
            };
            rules.push(Rule {
                path: path.clone(),
                recursive: true,
                actions,
                excluded: before.clone(),
            });
            before.push(path);
        }
        Ok(Policy { rules })
    }

    /// The SDK's `FilesPolicy`, as a grant's `files` carries it.
    fn of_files(files: &Value) -> Result<Policy, PolicyError> {
        let wire = FilesPolicyWire::deserialize(files).map_err(|e| PolicyError(e.to_string()))?;
        if wire.paths.len() > RULES_MAX {
            return Err(PolicyError(format!("more than {RULES_MAX} rules")));
        }
        let mut rules = Vec::with_capacity(wire.paths.len());
        for r in wire.paths {
            validate(&r.path).map_err(|e| PolicyError(e.to_string()))?;
            if r.excluded_paths.len() > RULES_MAX {
                return Err(PolicyError(format!(
                    "more than {RULES_MAX} excluded paths in a rule"
                )));
            }
            for e in &r.excluded_paths {
                validate(e).map_err(|e| PolicyError(e.to_string()))?;
            }
            rules.push(Rule {
                path: r.path,
                recursive: r.recursive,
                actions: r.actions,
                excluded: r.excluded_paths,
            });
        }
        Ok(Policy { rules })
    }

    /// Whether some rule allows `action` on `path` (a canonical path), and on everything
    /// under it when `subtree`.
    pub fn allows(&self, action: Action, path: &str, subtree: bool) -> bool {
        self.rules.iter().any(|r| r.allows(action, path, subtree))
    }

    /// Whether the folder `path` may be listed: a rule allows listing it, or it leads to a
    /// rule's path that may be listed (so a client can walk down to what it was granted).
    pub fn can_list_directory(&self, path: &str) -> bool {
        self.allows(Action::List, path, false)
            || self
                .rules
                .iter()
                .any(|r| r.allows(Action::List, &r.path, false) && descendant(path, &r.path))
    }

    /// Whether an entry found while listing may be shown: it may be listed or read, or, for
    /// a folder, listed as a directory.
    pub fn can_see(&self, path: &str, is_folder: bool) -> bool {
        self.allows(Action::List, path, false)
            || self.allows(Action::Read, path, false)
            || (is_folder && self.can_list_directory(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::StoragePathGrant;
    use serde_json::json;

    fn legacy(paths: &[(&str, bool)]) -> Policy {
        Policy::of_grant(&StorageGrant {
            paths: Some(
                paths
                    .iter()
                    .map(|&(path, read_only)| StoragePathGrant {
                        path: path.into(),
                        read_only,
                    })
                    .collect(),
            ),
            files: None,
        })
        .unwrap()
    }

    #[test]
    fn request_paths_lose_the_sdks_aliases_and_keep_nothing_unsafe() {
        for (raw, want) in [
            ("a/b.txt", "a/b.txt"),
            ("/a/b/", "a/b"),
            ("././a", "a"),
            (".", ""),
            ("/", ""),
            ("", ""),
            ("./", ""),
        ] {
            assert_eq!(request_path(raw).as_deref(), Ok(want), "{raw:?}");
        }
        for raw in [
            "a//b",
            "a/../b",
            "..",
            "a/./b",
            "a\\b",
            "a\u{0}b",
            "a\nb",
            "a\u{85}b",
            "a/.meshagent-directory",
            ".meshagent-upload-1/x",
        ] {
            assert!(request_path(raw).is_err(), "{raw:?}");
        }
        assert_eq!(request_path(&"a/".repeat(33)), Err(PathError::TooLong));
        assert!(request_path(&"a/".repeat(32)).is_ok());
        assert_eq!(request_path(&"x".repeat(256)), Err(PathError::TooLong));
        assert_eq!(request_path(&"abcd/".repeat(300)), Err(PathError::TooLong));
        // The message quotes a bounded, escaped prefix of what was refused.
        let e = request_path(&format!("{}\\", "y".repeat(100))).unwrap_err();
        assert!(e.to_string().len() < 220, "{e}");
    }

    #[test]
    fn paths_match_by_segment() {
        assert!(covers("data", "data"));
        assert!(covers("data", "data/x"));
        assert!(!covers("data", "database"));
        assert!(covers("", "anything/at/all"));
        assert_eq!(parent("a/b/c"), Some("a/b"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent(""), None);
        assert_eq!(file_name("a/b/c.txt"), "c.txt");
    }

    #[test]
    fn a_default_grant_allows_everything_but_presigning() {
        let p = Policy::of_grant(&StorageGrant::default()).unwrap();
        for a in [Action::List, Action::Read, Action::Write, Action::Delete] {
            assert!(p.allows(a, "x/y", false));
            assert!(p.allows(a, "", true));
        }
        assert!(!p.allows(Action::Presign, "x", false));
        assert!(!legacy(&[]).allows(Action::List, "", false));
    }

    #[test]
    fn the_first_legacy_entry_that_covers_a_path_decides_it() {
        let p = legacy(&[("/data", true), ("", false)]);
        assert!(p.allows(Action::Read, "data/a", false));
        assert!(!p.allows(Action::Write, "data/a", false));
        assert!(p.allows(Action::Write, "database", false));
        assert!(p.allows(Action::Write, "other/a", false));
        // The root's subtree holds the read-only folder: no recursive delete of it.
        assert!(!p.allows(Action::Delete, "", true));
        assert!(p.allows(Action::Delete, "other", true));
        // A later entry never widens an earlier one.
        let p = legacy(&[("", true), ("data", false)]);
        assert!(!p.allows(Action::Write, "data/a", false));
    }

    #[test]
    fn a_files_policy_replaces_the_paths_and_is_read_strictly() {
        let grant = StorageGrant {
            paths: None,
            files: Some(json!({"paths": [
                {"path": "shared", "recursive": true, "actions": ["list", "read", "presign"],
                 "excluded_paths": ["shared/private"]},
                {"path": "inbox/today.txt", "recursive": false, "actions": ["write"]}
            ]})),
        };
        let p = Policy::of_grant(&grant).unwrap();
        assert!(p.allows(Action::Presign, "shared/a.png", false));
        assert!(!p.allows(Action::Read, "shared/private/k", false));
        assert!(!p.allows(Action::Read, "shared", true));
        assert!(p.allows(Action::Write, "inbox/today.txt", false));
        assert!(!p.allows(Action::Write, "inbox/other.txt", false));
        assert!(!p.allows(Action::Write, "inbox/today.txt", true));
        // The folders on the way down to a granted rule may be listed, and nothing else there.
        assert!(p.can_list_directory(""));
        assert!(!p.can_list_directory("elsewhere"));
        assert!(p.can_see("shared", true));
        assert!(!p.can_see("secret.txt", false));
        for bad in [
            json!({"paths": [{"path": "a", "recursive": true, "actions": ["fly"]}]}),
            json!({"paths": [{"path": "/a", "recursive": true, "actions": []}]}),
            json!({"paths": [], "extra": 1}),
            json!({"paths": [{"path": "a", "actions": ["read"]}]}),
            json!("everything"),
        ] {
            let grant = StorageGrant {
                paths: None,
                files: Some(bad.clone()),
            };
            assert!(Policy::of_grant(&grant).is_err(), "{bad}");
        }
    }
}
