//! Bearer tokens: who may call what.
//!
//! Tokens come from `TASKWIRE_AUTH_TOKENS_FILE` (or the same text in `TASKWIRE_AUTH_TOKENS`),
//! one per line: the token, the operations it allows, and the tasks (globs) it may touch:
//!
//! ```text
//! # token                           operations               tasks
//! 4f9c2a7d0e1b8c6f5a3d9e2b7c1f0a8d  submit,read              examples.magic.v1.*
//! 0b7e4c9a2f6d1e8b3c5a7f0d9e2b4c6a  submit,read,cancel,admin *
//! ```
//!
//! Operations: `submit` (Submit, SubmitMany, a task's own method path, a workflow's Submit with
//! each step's task), `read` (Get, Wait, Watch, ListTaskTypes, reflection, a workflow's Get),
//! `cancel`, `admin` (the rest of Admin, and Schedules).
//! SubmitAndWait and a call by a task's own path that waits need `submit` and `read`. Tasks are
//! comma-separated globs where `*` matches anything. With tokens configured, a call without a
//! known token is UNAUTHENTICATED and one the token does not allow is PERMISSION_DENIED; the
//! health service stays open for probes. Without tokens every call is allowed.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;

/// Environment variables of the token settings.
pub mod env {
    /// A file of tokens, one per line.
    pub const TOKENS_FILE: &str = "TASKWIRE_AUTH_TOKENS_FILE";
    /// The same lines in the environment (`;` may separate them).
    pub const TOKENS: &str = "TASKWIRE_AUTH_TOKENS";
    /// The token the HTTP endpoints (dashboard, `/metrics`) require, as a bearer token or a
    /// basic-auth password; `/healthz` stays open.
    pub const HTTP_TOKEN: &str = "TASKWIRE_HTTP_TOKEN";
    /// A file holding that token.
    pub const HTTP_TOKEN_FILE: &str = "TASKWIRE_HTTP_TOKEN_FILE";
}

/// The HTTP token of `TASKWIRE_HTTP_TOKEN` or `TASKWIRE_HTTP_TOKEN_FILE`, checked for length.
pub fn http_token_from_env() -> Result<Option<String>, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let token = match (var(env::HTTP_TOKEN), var(env::HTTP_TOKEN_FILE)) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "set {} or {}, not both",
                env::HTTP_TOKEN,
                env::HTTP_TOKEN_FILE
            ));
        }
        (Some(token), None) => token,
        (None, Some(file)) => std::fs::read_to_string(&file)
            .map_err(|e| format!("{}={file}: {e}", env::HTTP_TOKEN_FILE))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "the HTTP token ({} or {}) is {} characters; use at least {MIN_TOKEN_LEN} random ones",
            env::HTTP_TOKEN,
            env::HTTP_TOKEN_FILE,
            token.len()
        ));
    }
    Ok(Some(token))
}

/// The shortest token accepted: guessing one must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Submit,
    Read,
    Cancel,
    Admin,
}

impl Op {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "submit" => Some(Self::Submit),
            "read" => Some(Self::Read),
            "cancel" => Some(Self::Cancel),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Cancel => "cancel",
            Self::Admin => "admin",
        })
    }
}

/// One token and what it allows.
#[derive(Clone)]
pub struct Token {
    secret: String,
    ops: Vec<Op>,
    tasks: Vec<String>,
    /// Where it was defined, for messages (never the token itself).
    line: usize,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("line", &self.line)
            .field("ops", &self.ops)
            .field("tasks", &self.tasks)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Whether this token may do `op` (on `task`, when the call names one).
    pub fn allows(&self, op: Op, task: Option<&str>) -> bool {
        self.ops.contains(&op)
            && task.is_none_or(|task| self.tasks.iter().any(|glob| glob_matches(glob, task)))
    }
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    /// Reads the token lines; errors name the line to fix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut tokens = Vec::new();
        for (n, raw) in text.split(['\n', ';']).enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let at = n + 1;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [secret, ops, tasks] = fields[..] else {
                return Err(format!(
                    "token line {at}: expected `TOKEN OPERATIONS TASKS`, e.g. `<token> submit,read examples.magic.v1.*`"
                ));
            };
            if secret.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "token line {at}: the token is {} characters; use at least {MIN_TOKEN_LEN} random ones",
                    secret.len()
                ));
            }
            let ops = ops
                .split(',')
                .map(|op| {
                    Op::parse(op).ok_or_else(|| {
                        // The field is not echoed: with the columns swapped it is the token.
                        format!(
                            "token line {at}: the second column holds an unknown operation; use submit, read, cancel or admin, comma separated"
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let tasks: Vec<String> = tasks.split(',').map(str::to_owned).collect();
            if ops.contains(&Op::Admin) && tasks != ["*"] {
                return Err(format!(
                    "token line {at}: `admin` covers every task (dead letters, limits, schedules, history): give `*` as its tasks, or drop `admin`"
                ));
            }
            if tokens.iter().any(|t: &Token| t.secret == secret) {
                return Err(format!("token line {at}: the same token is listed twice"));
            }
            tokens.push(Token {
                secret: secret.to_owned(),
                ops,
                tasks,
                line: at,
            });
        }
        Ok(Self { tokens })
    }

    /// The tokens of the environment; `None` when none are configured.
    pub fn from_env() -> Result<Option<Self>, String> {
        let text = match (
            std::env::var(env::TOKENS_FILE)
                .ok()
                .filter(|v| !v.is_empty()),
            std::env::var(env::TOKENS).ok().filter(|v| !v.is_empty()),
        ) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "set {} or {}, not both",
                    env::TOKENS_FILE,
                    env::TOKENS
                ));
            }
            (Some(file), None) => std::fs::read_to_string(&file)
                .map_err(|e| format!("{}={file}: {e}", env::TOKENS_FILE))?,
            (None, Some(text)) => text,
            (None, None) => return Ok(None),
        };
        // A configured but empty file keeps every call out rather than letting every call in.
        Self::parse(&text).map(Some)
    }

    /// The token presented, if it is one of these.
    fn find(&self, presented: &str) -> Option<&Token> {
        // Every token is compared, so that the time taken does not tell which one came close.
        self.tokens.iter().fold(None, |found, t| {
            let same = constant_time_eq(t.secret.as_bytes(), presented.as_bytes());
            found.or(same.then_some(t))
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `glob` (with `*` for any run of characters) matches all of `text`.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    let parts: Vec<&str> = glob.split('*').collect();
    if parts.len() == 1 {
        return glob == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Who is calling, put in each request's extensions by the [`Auth`] layer.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No tokens are configured: everything is allowed.
    Anyone,
    /// A known token.
    Token(Arc<Token>),
    /// A request that did not pass the layer.
    Nobody,
}

impl Caller {
    /// What scopes this caller's idempotency keys: with tokens, each token's keys are its own
    /// (a digest of the token, never the token), so that one producer's key can never stand
    /// for another's task; without tokens every caller shares one scope.
    pub fn key_scope(&self) -> Option<String> {
        match self {
            Self::Token(token) => {
                use sha2::Digest as _;
                let digest = sha2::Sha256::digest(token.secret.as_bytes());
                Some(digest[..12].iter().map(|b| format!("{b:02x}")).collect())
            }
            Self::Anyone | Self::Nobody => None,
        }
    }

    /// PERMISSION_DENIED unless the caller may do `op` (on `task`).
    pub fn check(&self, op: Op, task: Option<&str>) -> Result<(), Status> {
        match self {
            Self::Anyone => Ok(()),
            Self::Nobody => Err(Status::permission_denied("the call was not authenticated")),
            Self::Token(token) if token.allows(op, task) => Ok(()),
            Self::Token(_) => Err(Status::permission_denied(match task {
                Some(task) => format!("this token may not {op} task {task}"),
                None => format!("this token may not {op}"),
            })),
        }
    }
}

/// Checks a handler's request: the caller (from the [`Auth`] layer) may do `op` on `task`.
/// A request that did not pass the layer is refused.
pub fn check<T>(request: &tonic::Request<T>, op: Op, task: Option<&str>) -> Result<(), Status> {
    caller(request).check(op, task)
}

/// Checks a call about the task with `id` (Get, Wait, Watch, Cancel) whose type is `task`: a
/// task outside the token's globs is answered as if it did not exist, so that ids cannot be
/// probed for other tasks.
pub fn check_known<T>(
    request: &tonic::Request<T>,
    op: Op,
    id: &str,
    task: &str,
) -> Result<(), Status> {
    let caller = caller(request);
    caller.check(op, None)?;
    caller
        .check(op, Some(task))
        .map_err(|_| Status::not_found(format!("task {id} not found")))
}

/// The caller the [`Auth`] layer put in the request; none (a request that bypassed it) is
/// allowed nothing.
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or(Caller::Nobody)
}

/// Whether the request comes with a token whose tasks are limited, so that a handler must look
/// the task up before it can check (without tokens nothing is looked up for this).
pub fn restricted<T>(request: &tonic::Request<T>) -> bool {
    matches!(request.extensions().get::<Caller>(), Some(Caller::Token(_)))
}

/// What a method path needs before its handler runs, and whether it is a task's own method path:
/// `None` for the open health service.
fn required(path: &str) -> Option<(Vec<Op>, bool)> {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        // Not a gRPC method path: nothing a token without `admin` needs.
        return Some((vec![Op::Admin], false));
    };
    Some(match (service, method) {
        ("grpc.health.v1.Health", _) => return None,
        ("grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection", _) => {
            (vec![Op::Read], false)
        }
        ("taskwire.v1.Tasks", "Submit" | "SubmitMany") => (vec![Op::Submit], false),
        ("taskwire.v1.Tasks", "SubmitAndWait") => (vec![Op::Submit, Op::Read], false),
        ("taskwire.v1.Tasks", "Cancel" | "CancelMany") => (vec![Op::Cancel], false),
        ("taskwire.v1.Tasks", _) => (vec![Op::Read], false),
        ("taskwire.v1.Admin", "ListTaskTypes") => (vec![Op::Read], false),
        ("taskwire.v1.Workflows", "Submit") => (vec![Op::Submit], false),
        ("taskwire.v1.Workflows", "Cancel") => (vec![Op::Cancel], false),
        ("taskwire.v1.Workflows", _) => (vec![Op::Read], false),
        ("taskwire.v1.Admin" | "taskwire.v1.Schedules", _) => (vec![Op::Admin], false),
        // A task by its own method path: submits, and (unless asynchronous) reads the result.
        _ => (vec![Op::Submit], true),
    })
}

/// The tower layer: authenticates each call, checks the operation its method needs (and for a
/// task's own method path, the task), and hands the caller to the handlers.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S> Auth<S> {
    pub fn new(inner: S, tokens: Option<Arc<Tokens>>) -> Self {
        Self { inner, tokens }
    }
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(tokens) = &self.tokens else {
            request.extensions_mut().insert(Caller::Anyone);
            return Box::pin(self.inner.call(request));
        };
        let path = request.uri().path().to_owned();
        let Some((needs, direct)) = required(&path) else {
            return Box::pin(self.inner.call(request));
        };
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let refused =
            |status: Status| -> Self::Future { Box::pin(async move { Ok(status.into_http()) }) };
        let Some(presented) = presented else {
            return refused(Status::unauthenticated(
                "this gateway needs a token: send `authorization: Bearer <token>` metadata",
            ));
        };
        let Some(token) = tokens.find(presented) else {
            return refused(Status::unauthenticated(
                "the token is not known to this gateway",
            ));
        };
        let caller = Caller::Token(Arc::new(token.clone()));
        let direct_task = direct.then(|| path.trim_start_matches('/').to_owned());
        let asynchronous = request
            .headers()
            .get(crate::direct::ASYNC)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let mut needs = needs;
        if direct_task.is_some() && !asynchronous {
            needs.push(Op::Read);
        }
        for op in needs {
            if let Err(status) = caller.check(op, direct_task.as_deref()) {
                return refused(status);
            }
        }
        request.extensions_mut().insert(caller);
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_task_names() {
        assert!(glob_matches("*", "examples.magic.v1.Magic/Add"));
        assert!(glob_matches(
            "examples.magic.v1.*",
            "examples.magic.v1.Magic/Add"
        ));
        assert!(glob_matches("*/Add", "examples.magic.v1.Magic/Add"));
        assert!(glob_matches(
            "examples.*.Magic/*",
            "examples.magic.v1.Magic/Add"
        ));
        assert!(!glob_matches(
            "examples.magic.v1.*",
            "examples.chaos.v1.Chaos/Sleep"
        ));
        assert!(!glob_matches(
            "examples.magic.v1.Magic/Add",
            "examples.magic.v1.Magic/Addx"
        ));
        assert!(!glob_matches("a*b*c", "ac"));
    }

    #[test]
    fn token_lines_are_checked() {
        let tokens = Tokens::parse(
            "# comment\n0123456789abcdef submit,read examples.magic.v1.*  # producer\n",
        )
        .expect("valid");
        let token = tokens.find("0123456789abcdef").expect("known");
        assert!(token.allows(Op::Submit, Some("examples.magic.v1.Magic/Add")));
        assert!(!token.allows(Op::Submit, Some("examples.chaos.v1.Chaos/Sleep")));
        assert!(!token.allows(Op::Admin, None));
        assert!(tokens.find("0123456789abcdeF").is_none());
        for (bad, says) in [
            ("short submit *", "at least 16"),
            (
                "0123456789abcdef submit",
                "expected `TOKEN OPERATIONS TASKS`",
            ),
            ("0123456789abcdef write *", "unknown operation"),
            ("0123456789abcdef admin examples.*", "give `*`"),
        ] {
            let err = Tokens::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
