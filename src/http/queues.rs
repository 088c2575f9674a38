//! The named queues' routes: `GET /v1/queues` (each queue's state, depth and limits) and
//! `POST /v1/queues/{name}/pause` and `/resume`, which every node of a shared queue obeys.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::problem::ProblemBody;
use super::{AppState, Problem};
use crate::job::JobState;
use crate::queues::UNFINISHED_STATES;

/// One queue as `GET /v1/queues` shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct QueueInfo {
    name: String,
    /// Whether this node's configuration declares it (a job may name only a declared
    /// queue); jobs of a queue no longer declared still show here.
    declared: bool,
    /// Whether nothing new of it starts, on any node; running jobs finish.
    paused: bool,
    /// Its unfinished jobs by state: `queued`, `scheduled`, `running`, `failed`.
    #[schema(value_type = Object)]
    depth: BTreeMap<JobState, u64>,
    /// The most of its jobs that run at once on one node; absent without a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    concurrency: Option<usize>,
}

/// The answer of `GET /v1/queues`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct QueueList {
    queues: Vec<QueueInfo>,
}

/// The answer of a pause or a resume.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct QueuePaused {
    name: String,
    paused: bool,
}

/// `GET /v1/queues`: every declared queue, every queue that holds unfinished jobs, and every
/// queue an operator paused or resumed.
#[utoipa::path(
    get,
    path = "/v1/queues",
    tag = "queues",
    responses(
        (status = 200, description = "Every declared queue, every queue holding unfinished jobs, and every queue paused or resumed", body = QueueList),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the read scope, or is confined to a tenant", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The queue cannot be read", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_queues(state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let view = state.queue.queues(true).await.map_err(|error| Problem::storage(&error))?;
    let mut names: Vec<String> = state.queues.iter().map(|queue| queue.name.to_string()).collect();
    names.extend(view.depths.keys().chain(view.paused.keys()).filter(|name| state.queues.get(name).is_none()).cloned());
    names.sort();
    names.dedup();
    let queues = names
        .into_iter()
        .map(|name| {
            let declared = state.queues.get(&name);
            QueueInfo {
                declared: declared.is_some(),
                paused: view.paused.get(&name).copied().unwrap_or(false),
                depth: UNFINISHED_STATES
                    .into_iter()
                    .map(|state| {
                        (state, view.depths.get(&name).and_then(|states| states.get(&state)).copied().unwrap_or(0))
                    })
                    .collect(),
                concurrency: declared.and_then(|queue| queue.settings.concurrency),
                name,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(QueueList { queues }))
}

/// `POST /v1/queues/{name}/pause`: nothing new of the queue starts, on any node, from the
/// next claim on this one and within a second on the others; running jobs finish. Stored
/// with the queue, so it outlives restarts.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/pause",
    tag = "queues",
    params(("name" = String, Path, description = "A declared queue")),
    responses(
        (status = 200, description = "Paused (or already paused)", body = QueuePaused),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin scope", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such queue is declared (or stored)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The queue cannot be written; nothing changed", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn pause_queue(name: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    set_paused(&name, true, &state).await
}

/// `POST /v1/queues/{name}/resume`: the queue's jobs start again, in their order.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/resume",
    tag = "queues",
    params(("name" = String, Path, description = "A declared queue")),
    responses(
        (status = 200, description = "Running (or already running)", body = QueuePaused),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the admin scope", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such queue is declared", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The queue cannot be written; nothing changed", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn resume_queue(name: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    set_paused(&name, false, &state).await
}

/// Pauses or resumes a declared queue, or one the storage holds a word on (a queue paused
/// and then taken out of the configuration can still be resumed).
async fn set_paused(name: &str, paused: bool, state: &AppState) -> Result<HttpResponse, Problem> {
    let known = match state.queues.get(name) {
        Some(_) => true,
        None => {
            let view = state.queue.queues(false).await.map_err(|error| Problem::storage(&error))?;
            view.paused.contains_key(name)
        }
    };
    if !known {
        return Err(Problem::not_found(format!(
            "no queue named {name:?} is declared; declared queues: {}",
            state.queues.names_text()
        )));
    }
    state.queue.set_queue_paused(name, paused, false).await.map_err(|error| Problem::storage(&error))?;
    tracing::info!(queue = name, paused, "queue {}", if paused { "paused" } else { "resumed" });
    // This node's Dispatcher hears at once, through the watch; the others read it within
    // a quarter of a second (`server/pauses.rs`).
    state.pauses_changed.notify_one();
    Ok(HttpResponse::Ok().json(QueuePaused { name: name.to_owned(), paused }))
}
