//! Who may call the API: bearer tokens read from a token file, each with a name, scopes
//! and optional key prefixes, compared in constant time and swappable on SIGHUP.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aws_lc_rs::digest::{SHA256, digest};
use subtle::ConstantTimeEq as _;

/// The shortest token accepted: 128 bits of hex. Shorter secrets can be guessed online.
pub const MIN_TOKEN_CHARS: usize = 32;

/// What a token may do. Each route needs one scope; `/healthz`, `/readyz` and
/// `/v1/openapi.json` need none, and `/metrics` on the API port needs `read` from a token
/// without confinements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Create jobs: `POST /v1/jobs`, `POST /v1/payloads`.
    Submit,
    /// Read job records, listings and stats.
    Read,
    /// Control jobs: retry and cancel.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Submit, Scope::Read, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Submit => "submit",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn from_name(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == name)
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Submit => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }
}

/// The caller a valid token stands for. Logs and metrics show its name, never its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    scopes: u8,
    /// The token's confinements: each option of its line that a kind reads
    /// ([`crate::kinds::TokenLimit`]), with its items as that kind kept them. Only the
    /// kind gives them a meaning.
    limits: BTreeMap<&'static str, Vec<String>>,
}

impl Principal {
    /// Whether the caller is confined (by any kind's token limit) and so sees and
    /// controls only the jobs it submitted.
    pub fn is_confined(&self) -> bool {
        !self.limits.is_empty()
    }

    /// The items of one of the token's options; none when the line does not have it.
    pub fn limit(&self, option: &str) -> &[String] {
        self.limits.get(option).map_or(&[], Vec::as_slice)
    }

    /// The options that confine the caller, for a message: `allowed_key_prefixes`.
    pub fn confinements(&self) -> String {
        self.limits.keys().copied().collect::<Vec<_>>().join(" and ")
    }

    pub fn has(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }
}

/// One line of the token file, with the token kept only as its SHA-256 digest.
struct Entry {
    principal: Arc<Principal>,
    token_digest: [u8; 32],
    /// Where it was read, for the error of a later line that repeats it.
    line: usize,
}

/// Every token of one token file.
pub struct TokenSet {
    entries: Vec<Entry>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|entry| entry.principal.name.as_str()).collect();
        f.debug_struct("TokenSet").field("names", &names).finish()
    }
}

/// Why a token file cannot be used. Messages name the line and the column, never what a
/// column holds: a line with its columns swapped holds its token in another column, and
/// errors reach logs and terminals.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("token file line {line}: expected `<name> <scopes> <token> [<option>=<item>,...]...`")]
    Shape { line: usize },
    #[error("token file line {line}, column {column} ({column_name}): {problem}")]
    Column { line: usize, column: usize, column_name: &'static str, problem: String },
    /// What `jobd token new` was given does not make a valid line.
    #[error("{argument}: {problem}")]
    Argument { argument: &'static str, problem: String },
    #[error("the system's random number generator failed")]
    Random,
}

/// A line for the token file: `name`, `scopes` (comma-separated) and a new token of 32
/// random bytes from the system's cryptographic generator, hex-encoded (64 characters),
/// then `options` as given (`allowed_destinations=billing`). The line is checked as the
/// token file would check it, so a bad name, scope or option is refused here, naming the
/// argument, not at the next reload.
pub fn new_token_line(name: &str, scopes: &str, options: &[String]) -> Result<String, TokenFileError> {
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| TokenFileError::Random)?;
    let token: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
    let blank = |argument: &'static str, value: &str| {
        (value.is_empty() || value.contains(char::is_whitespace))
            .then(|| TokenFileError::Argument { argument, problem: "must be one word, without spaces".to_owned() })
    };
    if let Some(error) = blank("name", name).or_else(|| blank("scopes", scopes)) {
        return Err(error);
    }
    if let Some(error) = options.iter().find_map(|option| blank("option", option)) {
        return Err(error);
    }
    let mut line = format!("{name} {scopes} {token}");
    for option in options {
        line.push(' ');
        line.push_str(option);
    }
    TokenSet::parse(&line).map_err(|error| match error {
        TokenFileError::Column { column_name, problem, .. } => {
            TokenFileError::Argument { argument: column_name, problem }
        }
        other => other,
    })?;
    Ok(line)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

impl TokenSet {
    /// Reads a token file.
    pub fn load(path: &Path) -> Result<TokenSet, TokenFileError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: path.to_owned(), source })?;
        TokenSet::parse(&text)
    }

    /// Parses `<name> <scopes> <token> [<option>=<item>,...]...` lines, whose options are
    /// the kinds' token limits (`allowed_key_prefixes=a/,b/`); blank
    /// lines and `#` comments are skipped. A file without token lines is valid and admits
    /// no one: emptying the file is how an operator revokes every token at once.
    pub fn parse(text: &str) -> Result<TokenSet, TokenFileError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let content = line.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = content.split_whitespace().collect();
            let [name, scopes, token, options @ ..] = fields.as_slice() else {
                return Err(TokenFileError::Shape { line: line_number });
            };
            let fail = |column: usize, problem: String| TokenFileError::Column {
                line: line_number,
                column,
                column_name: match column {
                    1 => "name",
                    2 => "scopes",
                    3 => "token",
                    _ => "option",
                },
                problem,
            };
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                return Err(fail(1, "a name may hold only letters, digits, '-', '_' and '.'".to_owned()));
            }
            let mut scope_bits = 0;
            for scope_name in scopes.split(',') {
                let scope = Scope::from_name(scope_name)
                    .ok_or_else(|| fail(2, "unknown scope; the known ones are submit, read and admin".to_owned()))?;
                scope_bits |= scope.bit();
            }
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(fail(3, format!("the token is shorter than {MIN_TOKEN_CHARS} characters")));
            }
            let mut limits: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
            for (position, option) in options.iter().enumerate() {
                let column = 4 + position;
                let (option_name, list) = option.split_once('=').unwrap_or((option, ""));
                let Some(limit) = crate::kinds::token_limit(option_name) else {
                    let known: Vec<String> =
                        crate::kinds::token_limits().map(|limit| format!("{}=...", limit.option)).collect();
                    return Err(fail(column, format!("unknown option; {} exist", known.join(" and "))));
                };
                let items = limits.entry(limit.option).or_default();
                for (number, item) in list.split(',').enumerate() {
                    let kept = (limit.parse_item)(item)
                        .map_err(|problem| fail(column, format!("item {}: {problem}", number + 1)))?;
                    items.push(kept);
                }
            }
            let token_digest = sha256(token.as_bytes());
            if let Some(earlier) = entries.iter().find(|entry| entry.principal.name == *name) {
                return Err(fail(1, format!("the name is used twice: line {} has it too", earlier.line)));
            }
            if let Some(earlier) = entries.iter().find(|entry| bool::from(entry.token_digest.ct_eq(&token_digest))) {
                return Err(fail(3, format!("the token repeats line {}'s token", earlier.line)));
            }
            entries.push(Entry {
                principal: Arc::new(Principal { name: (*name).to_owned(), scopes: scope_bits, limits }),
                token_digest,
                line: line_number,
            });
        }
        Ok(TokenSet { entries })
    }

    /// The caller `token` belongs to. Both sides are compared as SHA-256 digests, in
    /// constant time and against every entry, so the time taken tells nothing about how
    /// much of a guess was right, nor its length, nor which entry it resembled.
    pub fn find(&self, token: &[u8]) -> Option<Arc<Principal>> {
        let presented = sha256(token);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.token_digest.ct_eq(&presented)) {
                found = Some(entry.principal.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why a request was not let through, also the `reason` label of
/// `jobd_auth_failures_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that no line of the token file holds, or a malformed header.
    Invalid,
    /// A valid token without the route's scope.
    Scope { name: String, needed: Scope },
    /// A valid token confined to its own jobs, on a route that describes the whole
    /// daemon (`/metrics`).
    Confined { name: String },
}

impl AuthFailure {
    /// Every reason: this module's, and each kind's token limit's.
    pub fn reasons() -> impl Iterator<Item = &'static str> {
        ["missing", "invalid", "scope", "confined"]
            .into_iter()
            .chain(crate::kinds::token_limits().map(|limit| limit.auth_failure_reason))
    }

    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Scope { .. } => "scope",
            AuthFailure::Confined { .. } => "confined",
        }
    }
}

/// The token set in force, if authentication is on. Swapped whole on reload, so a
/// request sees either the old file or the new one, never a mix.
#[derive(Debug)]
pub struct Authenticator {
    path: Option<PathBuf>,
    tokens: RwLock<Option<Arc<TokenSet>>>,
}

impl Authenticator {
    /// Authentication off: every route is open. Only allowed on loopback or with
    /// `allow_unauthenticated`, which the configuration checks.
    pub fn disabled() -> Authenticator {
        Authenticator { path: None, tokens: RwLock::new(None) }
    }

    /// Loads `path`, failing if it cannot be used: jobd never starts with a token file
    /// it cannot read, because that would silently open or close the API.
    pub fn from_file(path: &Path) -> Result<Authenticator, TokenFileError> {
        let tokens = TokenSet::load(path)?;
        Ok(Authenticator { path: Some(path.to_owned()), tokens: RwLock::new(Some(Arc::new(tokens))) })
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// The token file, when authentication is on.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// How many tokens are in force; `None` when authentication is off. Zero means every
    /// authenticated request is refused.
    pub fn token_count(&self) -> Option<usize> {
        match self.tokens.read() {
            Ok(slot) => slot.as_ref().map(|tokens| tokens.len()),
            // A poisoned lock refuses every token (see `check`), as an empty file does.
            Err(_) => self.path.as_ref().map(|_| 0),
        }
    }

    /// Reads the token file again. On error the tokens in force stay, so a typo in an
    /// edit locks no one out. Returns the number of tokens now in force.
    pub fn reload(&self) -> Result<Option<usize>, TokenFileError> {
        let Some(path) = &self.path else { return Ok(None) };
        let tokens = TokenSet::load(path)?;
        let count = tokens.len();
        if let Ok(mut slot) = self.tokens.write() {
            *slot = Some(Arc::new(tokens));
        }
        Ok(Some(count))
    }

    /// Checks an `Authorization` header value for `scope`. `Ok(None)` means authentication
    /// is off.
    pub fn check(&self, authorization: Option<&[u8]>, scope: Scope) -> Result<Option<Arc<Principal>>, AuthFailure> {
        let tokens = match self.tokens.read() {
            Ok(slot) => slot.clone(),
            // A poisoned lock means a writer panicked mid-swap; refusing is the safe answer.
            Err(_) => return Err(AuthFailure::Invalid),
        };
        let Some(tokens) = tokens else { return Ok(None) };
        let header = authorization.ok_or(AuthFailure::Missing)?;
        let token = bearer_token(header).ok_or(AuthFailure::Invalid)?;
        let principal = tokens.find(token).ok_or(AuthFailure::Invalid)?;
        if principal.has(scope) {
            Ok(Some(principal))
        } else {
            Err(AuthFailure::Scope { name: principal.name.clone(), needed: scope })
        }
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN_A: &str = "0123456789abcdef0123456789abcdef";
    const TOKEN_B: &str = "fedcba9876543210fedcba9876543210";

    fn tokens() -> TokenSet {
        TokenSet::parse(&format!(
            "# comment\n\ningest submit,read {TOKEN_A} allowed_key_prefixes=tenant-a/,shared\nops admin {TOKEN_B}\n"
        ))
        .expect("valid token file")
    }

    #[test]
    fn tokens_resolve_to_their_names_scopes_and_prefixes() {
        let set = tokens();
        let ingest = set.find(TOKEN_A.as_bytes()).expect("known token");
        assert_eq!(ingest.name, "ingest");
        assert!(ingest.has(Scope::Submit) && ingest.has(Scope::Read) && !ingest.has(Scope::Admin));
        assert_eq!(ingest.limit("allowed_key_prefixes"), ["tenant-a", "shared"], "kept as the kind parsed them");
        assert!(ingest.is_confined() && ingest.limit("allowed_destinations").is_empty());
        let ops = set.find(TOKEN_B.as_bytes()).expect("known token");
        assert!(!ops.is_confined());
        assert!(set.find(b"0123456789abcdef0123456789abcdeX").is_none());
        assert!(set.find(b"").is_none());
    }

    #[test]
    fn the_header_needs_the_bearer_scheme_and_the_scope() {
        let auth = Authenticator { path: Some(PathBuf::from("unused")), tokens: RwLock::new(Some(Arc::new(tokens()))) };
        let header = format!("bearer {TOKEN_B}");
        assert_eq!(auth.check(None, Scope::Admin), Err(AuthFailure::Missing));
        assert_eq!(auth.check(Some(TOKEN_B.as_bytes()), Scope::Admin), Err(AuthFailure::Invalid));
        assert!(auth.check(Some(header.as_bytes()), Scope::Admin).is_ok());
        assert_eq!(
            auth.check(Some(header.as_bytes()), Scope::Submit),
            Err(AuthFailure::Scope { name: "ops".to_owned(), needed: Scope::Submit })
        );
        assert_eq!(Authenticator::disabled().check(None, Scope::Admin), Ok(None));
    }

    #[test]
    fn bad_lines_name_the_line_and_never_the_token() {
        for (text, expected) in [
            (format!("a submit {TOKEN_A}\nb submit {TOKEN_A}\n"), "line 2"),
            (format!("a write {TOKEN_A}\n"), "unknown scope"),
            ("a submit short\n".to_owned(), "shorter than"),
            (format!("a submit {TOKEN_A} allowed_key_prefixes=../x\n"), "allowed key prefix"),
            (format!("a submit {TOKEN_A}\na read {TOKEN_B}\n"), "used twice"),
            (
                format!("a submit {TOKEN_A} allowed_destinations=bill/ing\n"),
                "column 4 (option): item 1: a destination name",
            ),
            (
                format!("a submit {TOKEN_A} allowed_key_prefixes=a/ frobnicate=x\n"),
                "column 5 (option): unknown option; allowed_key_prefixes=... and allowed_destinations=... exist",
            ),
        ] {
            let message = TokenSet::parse(&text).expect_err("invalid").to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            assert!(!message.contains(TOKEN_A) && !message.contains(TOKEN_B), "{message:?} shows a token");
        }
    }

    #[test]
    fn a_new_token_line_carries_its_options_and_names_a_bad_argument() {
        let options = ["allowed_destinations=billing,crm".to_owned(), "allowed_key_prefixes=t/".to_owned()];
        let line = new_token_line("tenant", "submit,read", &options).expect("valid arguments");
        let token = line.split_whitespace().nth(2).expect("a token column").to_owned();
        let set = TokenSet::parse(&line).expect("the line parses");
        let tenant = set.find(token.as_bytes()).expect("its own token");
        assert_eq!(tenant.limit("allowed_destinations"), ["billing", "crm"]);
        assert_eq!(tenant.limit("allowed_key_prefixes"), ["t"]);
        for (name, scopes, options, expected) in [
            ("tenant", "submit,write", vec![], "scopes: unknown scope"),
            ("ten ant", "submit", vec![], "name: must be one word"),
            ("tenant", "submit", vec!["allowed_colours=red".to_owned()], "option: unknown option"),
        ] {
            let message = new_token_line(name, scopes, &options).expect_err("invalid").to_string();
            assert!(message.starts_with(expected), "{message:?} does not start with {expected:?}");
            assert!(!message.contains("token file line"), "{message:?} speaks of a file");
        }
    }

    #[test]
    fn a_file_without_tokens_admits_no_one() {
        for text in ["", "# every token revoked\n\n   \n"] {
            let set = TokenSet::parse(text).expect("an empty token file is valid");
            assert!(set.is_empty());
            let auth = Authenticator { path: Some(PathBuf::from("unused")), tokens: RwLock::new(Some(Arc::new(set))) };
            assert_eq!(auth.token_count(), Some(0));
            let header = format!("Bearer {TOKEN_A}");
            assert_eq!(auth.check(Some(header.as_bytes()), Scope::Submit), Err(AuthFailure::Invalid));
            assert_eq!(auth.check(None, Scope::Read), Err(AuthFailure::Missing));
        }
        assert_eq!(Authenticator::disabled().token_count(), None);
    }

    #[test]
    fn a_line_with_its_columns_swapped_names_the_line_and_column_never_the_token() {
        // A token such as base64 makes, which is not a valid name either.
        const SLASHED: &str = "Zm9v+YmFy/0123456789abcdef0123456789==";
        for (text, expected) in [
            // name and token swapped: the token is in the name column.
            (format!("# tokens\n{TOKEN_A} submit ingest\n"), "line 2, column 3 (token)"),
            (format!("{SLASHED} submit ingest\n"), "line 1, column 1 (name)"),
            // scopes and token swapped.
            (format!("ingest {TOKEN_A} submit\n"), "line 1, column 2 (scopes)"),
            (format!("ingest {SLASHED} submit\n"), "line 1, column 2 (scopes)"),
            (format!("ingest submit {TOKEN_A}\n{TOKEN_B} admin ingest\n"), "line 2, column 3 (token)"),
            (format!("ingest submit {TOKEN_A}\nops admin short {TOKEN_B}\n"), "line 2, column 3 (token)"),
            (format!("ingest submit {TOKEN_A}\ningest admin {TOKEN_B}\n"), "line 2, column 1 (name)"),
            (format!("ingest submit {TOKEN_A}\nops admin {TOKEN_A}\n"), "line 2, column 3 (token)"),
        ] {
            let message = TokenSet::parse(&text).expect_err("invalid").to_string();
            assert!(message.contains(expected), "{message:?} lacks {expected:?}");
            for secret in [TOKEN_A, TOKEN_B, SLASHED] {
                assert!(!message.contains(secret), "{message:?} shows a token");
            }
        }
    }
}
