//! The client side of the `jobd` binary: `jobd submit`, `jobd jobs …` and `jobd stats`
//! talk to a running jobd over its HTTP API, with the exit codes docs/operations.md documents.

mod commands;
mod progress;
mod submit;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

pub use commands::{jobs, queues, stats};
pub use submit::{SubmitArgs, submit};

/// What a client command's exit status means. Usage errors (2) come from clap as well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked for was done.
    Success = 0,
    /// The server refused something: a job not found, a conflict, an invalid line.
    Refused = 1,
    /// The command line or the input could not be used.
    Usage = 2,
    /// The server could not be reached, or failed (5xx), after retries.
    Unreachable = 3,
    /// The server refused the token (401) or its scope (403).
    Unauthorized = 4,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// Where jobd is and who is asking: every client command takes these.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// jobd's base URL.
    #[arg(long, env = "JOBD_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// A bearer token.
    #[arg(long, env = "JOBD_TOKEN", hide_env_values = true, global = true, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// A file holding the bearer token: the bare token, or a line of jobd's token file as
    /// `jobd token new` prints it (`<name> <scopes> <token> ...`).
    #[arg(long, env = "JOBD_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Which line of a --token-file with several tokens to use, by its name.
    #[arg(long, env = "JOBD_TOKEN_NAME", global = true, requires = "token_file")]
    pub token_name: Option<String>,
    /// How answers are printed.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

/// How a client command prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Lines for a person.
    Text,
    /// JSON for a program: one document per answer (per refresh with `--watch`).
    Json,
}

/// `jobd jobs …`.
#[derive(Debug, Clone, Subcommand)]
pub enum JobsCommand {
    /// Print one job's record.
    Get {
        id: String,
        /// Include the payload.
        #[arg(long)]
        payload: bool,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state: queued, scheduled, running, failed, succeeded, dead, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Records per page, 1 to 1000.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The `next_cursor` of an earlier page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Queue a dead job again.
    Retry { id: String },
    /// Cancel a queued, scheduled or failed job.
    Cancel { id: String },
}

#[derive(Debug, Clone, Subcommand)]
pub enum QueuesCommand {
    /// List the queues: paused or running, their unfinished jobs, their limits.
    List,
    /// Start nothing more of a queue, on every node; running jobs finish.
    Pause { name: String },
    /// Start a paused queue's jobs again, in their order.
    Resume { name: String },
}

/// Why a client command failed, and the exit status that says so.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The command line or the input cannot be used; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// `refused_connection`: the request never left this host (no connection was made),
    /// so sending it again cannot create a second copy.
    #[error("cannot reach jobd at {url}: {reason}")]
    Unreachable { url: String, reason: String, refused_connection: bool },
    /// jobd answered with an error status; `detail` is its problem in one line.
    #[error("jobd answered {status}: {detail}")]
    Refused { status: u16, detail: String },
    /// Whoever read the output closed it (`| head`): the command ends quietly.
    #[error("standard output was closed")]
    OutputClosed,
}

impl ClientError {
    pub fn exit(&self) -> Exit {
        match self {
            ClientError::Usage(_) => Exit::Usage,
            ClientError::OutputClosed => Exit::Success,
            ClientError::Unreachable { .. } => Exit::Unreachable,
            ClientError::Refused { status: 401 | 403, .. } => Exit::Unauthorized,
            ClientError::Refused { status, .. } if *status >= 500 => Exit::Unreachable,
            ClientError::Refused { .. } => Exit::Refused,
        }
    }
}

/// A server's answer, whatever its status.
pub(crate) struct Answer {
    pub status: u16,
    /// `Retry-After` in seconds, on a 429 or 503.
    pub retry_after: Option<Duration>,
    pub body: bytes::Bytes,
}

impl Answer {
    /// The body as JSON when the status is a success, or the problem as an error.
    pub fn json(self) -> Result<Value, ClientError> {
        if (200..300).contains(&self.status) {
            return serde_json::from_slice(&self.body).map_err(|error| ClientError::Refused {
                status: self.status,
                detail: format!("the answer is not JSON: {error}"),
            });
        }
        Err(self.problem())
    }

    /// The problem an error status carries, as an error naming its detail and fields.
    pub fn problem(&self) -> ClientError {
        ClientError::Refused { status: self.status, detail: problem_detail(&self.body) }
    }

    /// The problem's `type`, such as `/problems/outcome-unknown`.
    pub fn problem_type(&self) -> Option<String> {
        let problem: Value = serde_json::from_slice(&self.body).ok()?;
        problem["type"].as_str().map(str::to_owned)
    }
}

/// A problem+json body in one line: its detail, then each field error. Control
/// characters become spaces: what a server says must not drive the operator's terminal.
fn problem_detail(body: &[u8]) -> String {
    printable(&problem_text(body))
}

fn problem_text(body: &[u8]) -> String {
    let Ok(problem) = serde_json::from_slice::<Value>(body) else {
        return String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    };
    let mut line = problem["detail"].as_str().or(problem["title"].as_str()).unwrap_or("no detail").to_owned();
    for error in problem["errors"].as_array().into_iter().flatten() {
        let field = error["field"].as_str().unwrap_or("?");
        let message = error["message"].as_str().unwrap_or("");
        line.push_str(&format!("; {field}: {message}"));
    }
    line
}

/// `text` with every control character (escape sequences included) replaced by a space.
pub(crate) fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// An HTTP client bound to one jobd and one token.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// The token a `--token-file` holds: the file is either the bare token, or lines of jobd's
/// own token file (`<name> <scopes> <token> [options]`, with `#` comments), of which the one
/// named `name`, or the only one. What is wrong names lines and names, never a token.
fn token_in_file(text: &str, name: Option<&str>) -> Result<String, String> {
    let lines: Vec<(usize, Vec<&str>)> = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.split_whitespace().collect::<Vec<_>>()))
        .filter(|(_, fields)| fields.first().is_some_and(|first| !first.starts_with('#')))
        .collect();
    if let [(_, fields)] = lines.as_slice()
        && let [token] = fields.as_slice()
    {
        return match name {
            None => Ok((*token).to_owned()),
            Some(name) => Err(format!("it holds a bare token, not a line named {name}")),
        };
    }
    let mut tokens = Vec::new();
    for (number, fields) in &lines {
        let [line_name, _scopes, token, ..] = fields.as_slice() else {
            return Err(format!(
                "line {number}: expected a bare token, or a token-file line `<name> <scopes> <token> ...`"
            ));
        };
        tokens.push((*line_name, *token));
    }
    let names = || tokens.iter().map(|(line_name, _)| *line_name).collect::<Vec<_>>().join(", ");
    match (name, tokens.as_slice()) {
        (Some(name), _) => tokens
            .iter()
            .find(|(line_name, _)| *line_name == name)
            .map(|(_, token)| (*token).to_owned())
            .ok_or_else(|| format!("no line is named {name}; the names are {}", names())),
        (None, [(_, token)]) => Ok((*token).to_owned()),
        (None, []) => Err("it holds no token".to_owned()),
        (None, _) => Err(format!("it holds {} tokens ({}); choose one with --token-name", tokens.len(), names())),
    }
}

impl Client {
    pub fn new(args: &ConnectionArgs) -> Result<Client, ClientError> {
        let token = match (&args.token, &args.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    ClientError::Usage(format!("cannot read the token file {}: {error}", path.display()))
                })?;
                let token = token_in_file(&text, args.token_name.as_deref())
                    .map_err(|problem| ClientError::Usage(format!("token file {}: {problem}", path.display())))?;
                Some(token)
            }
            (None, None) => None,
        };
        let base = args.url.trim_end_matches('/').to_owned();
        if url::Url::parse(&base).is_err() {
            return Err(ClientError::Usage(format!("--url {base} is not a URL")));
        }
        // Redirects are not followed: a POST turned into a GET by a redirect would answer
        // 200 with something that is not its jobs.
        // Idle connections are dropped after 2 s, before jobd's HTTP server closes them (a
        // keep-alive of 5 s): a batch sent on a connection as the server closes it gets no
        // answer, and would be reported as "may or may not have been accepted". Batches that
        // wait out a full queue leave connections idle for seconds; under load a CI run
        // met exactly that with the default pool, which keeps idle connections 90 s.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|error| ClientError::Usage(format!("cannot build an HTTP client: {error}")))?;
        Ok(Client { http, base, token })
    }

    /// Sends one request and reads the whole answer.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let mut url = url::Url::parse(&format!("{}{path}", self.base))
            .map_err(|error| ClientError::Usage(format!("{}{path} is not a URL: {error}", self.base)))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self.http.request(method, url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        let unreachable = |error: reqwest::Error| ClientError::Unreachable {
            url: url.to_string(),
            reason: crate::error_text::with_causes(&error),
            refused_connection: error.is_connect(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(unreachable)?;
        Ok(Answer { status, retry_after, body })
    }

    pub async fn get_json(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ClientError> {
        self.send(reqwest::Method::GET, path, query, None).await?.json()
    }
}

/// Runs a client command's future on a runtime of its own, and turns its result into an
/// exit status, printing the error.
pub fn run<F>(command: F) -> Exit
where
    F: std::future::Future<Output = Result<Exit, ClientError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("jobd: cannot start a runtime: {error}");
            return Exit::Unreachable;
        }
    };
    match runtime.block_on(command) {
        Ok(exit) => exit,
        Err(ClientError::OutputClosed) => Exit::Success,
        Err(error) => {
            eprintln!("jobd: {error}");
            error.exit()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request that cannot be sent says why, not only "error sending request".
    #[test]
    fn a_token_file_may_hold_the_bare_token_or_lines_of_jobds_own_file() {
        let token = "0123456789abcdef0123456789abcdef";
        let other = "fedcba9876543210fedcba9876543210";
        assert_eq!(token_in_file(&format!("  {token}\n"), None).as_deref(), Ok(token));
        let line = format!("# made by jobd token new\ningest submit,read {token}\n");
        assert_eq!(token_in_file(&line, None).as_deref(), Ok(token), "the line jobd token new prints");
        let file = format!("ingest submit,read {token} allowed_key_prefixes=a/\nops admin {other}\n");
        assert_eq!(token_in_file(&file, Some("ops")).as_deref(), Ok(other));
        for (text, name, expected) in [
            (file.clone(), None, "it holds 2 tokens (ingest, ops); choose one with --token-name"),
            (file.clone(), Some("nobody"), "no line is named nobody; the names are ingest, ops"),
            (format!("ingest {token}\n"), None, "line 1: expected a bare token"),
            ("# nothing\n".to_owned(), None, "it holds no token"),
        ] {
            let problem = token_in_file(&text, name).expect_err("refused");
            assert!(problem.starts_with(expected), "{problem:?} does not start with {expected:?}");
            assert!(!problem.contains(token) && !problem.contains(other), "{problem:?} shows a token");
        }
    }

    #[tokio::test]
    async fn an_unreachable_daemon_is_reported_with_the_cause() {
        // A port that was free a moment ago: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("port");
        let args = ConnectionArgs {
            url: format!("http://{port}"),
            token: None,
            token_file: None,
            token_name: None,
            output: Output::Text,
        };
        let client = Client::new(&args).expect("client");
        let Err(error) = client.send(reqwest::Method::GET, "/healthz", &[], None).await else {
            panic!("something answered on a port nothing listens on");
        };
        let ClientError::Unreachable { reason, refused_connection, .. } = &error else { panic!("{error}") };
        assert!(*refused_connection, "{error}");
        assert!(reason.to_lowercase().contains("refused"), "the cause is named: {reason}");
    }
}
