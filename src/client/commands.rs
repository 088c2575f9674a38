//! `jobd jobs get|list|retry|cancel`, `jobd queues list|pause|resume` and `jobd stats
//! [--watch]`: one request each (one per refresh), printed for a person or as JSON.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use serde_json::Value;

use super::{Client, ClientError, ConnectionArgs, Exit, JobsCommand, Output, QueuesCommand, printable};

/// Runs `jobd jobs …`.
pub async fn jobs(connection: ConnectionArgs, command: JobsCommand) -> Result<Exit, ClientError> {
    let client = Client::new(&connection)?;
    let answer = match &command {
        JobsCommand::Get { id, payload } => {
            let query: &[(&str, &str)] = if *payload { &[("payload", "true")] } else { &[] };
            client.get_json(&format!("/v1/jobs/{}", path_segment(id)), query).await?
        }
        JobsCommand::List { state, limit, cursor } => {
            let limit = limit.to_string();
            let mut query = vec![("limit", limit.as_str())];
            query.extend(state.as_deref().map(|state| ("state", state)));
            query.extend(cursor.as_deref().map(|cursor| ("cursor", cursor)));
            client.get_json("/v1/jobs", &query).await?
        }
        JobsCommand::Retry { id } => {
            let path = format!("/v1/jobs/{}/retry", path_segment(id));
            client.send(reqwest::Method::POST, &path, &[], None).await?.json()?
        }
        JobsCommand::Cancel { id } => {
            let path = format!("/v1/jobs/{}", path_segment(id));
            client.send(reqwest::Method::DELETE, &path, &[], None).await?.json()?
        }
    };
    let text = match connection.output {
        Output::Json => format!("{answer}\n"),
        Output::Text => match command {
            JobsCommand::List { .. } => list_text(&answer),
            _ => record_text(&answer),
        },
    };
    emit(&text)?;
    Ok(Exit::Success)
}

/// Runs `jobd queues …`.
pub async fn queues(connection: ConnectionArgs, command: QueuesCommand) -> Result<Exit, ClientError> {
    let client = Client::new(&connection)?;
    let answer = match &command {
        QueuesCommand::List => client.get_json("/v1/queues", &[]).await?,
        QueuesCommand::Pause { name } | QueuesCommand::Resume { name } => {
            let action = if matches!(command, QueuesCommand::Pause { .. }) { "pause" } else { "resume" };
            let path = format!("/v1/queues/{}/{action}", path_segment(name));
            client.send(reqwest::Method::POST, &path, &[], None).await?.json()?
        }
    };
    let text = match (connection.output, &command) {
        (Output::Json, _) => format!("{answer}\n"),
        (Output::Text, QueuesCommand::List) => queues_text(&answer),
        (Output::Text, _) => {
            let state = if answer["paused"] == true { "paused" } else { "running" };
            format!("{}: {state}\n", printable(answer["name"].as_str().unwrap_or("?")))
        }
    };
    emit(&text)?;
    Ok(Exit::Success)
}

/// The queues as a table: name, state, unfinished jobs by state, and the node's limit.
fn queues_text(list: &Value) -> String {
    let queues = list["queues"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut text = format!(
        "{:<24}  {:<8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>11}  NOTE\n",
        "QUEUE", "STATE", "QUEUED", "SCHEDULED", "RUNNING", "FAILED", "CONCURRENCY"
    );
    for queue in queues {
        let state = if queue["paused"] == true { "paused" } else { "running" };
        let note = if queue["declared"] == true { "" } else { "not declared on this node" };
        let depth = |state: &str| queue["depth"][state].as_u64().unwrap_or(0);
        text.push_str(&format!(
            "{:<24}  {state:<8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>11}  {note}\n",
            printable(queue["name"].as_str().unwrap_or("?")),
            depth("queued"),
            depth("scheduled"),
            depth("running"),
            depth("failed"),
            queue["concurrency"].as_u64().map_or_else(|| "-".to_owned(), |limit| limit.to_string()),
        ));
    }
    text
}

/// Writes `text` to standard output at once. A reader that went away (`jobd jobs list |
/// head -2`) ends the command quietly and successfully, as `ls | head` does: what it
/// wanted, it read.
pub(super) fn emit(text: &str) -> Result<(), ClientError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(ClientError::OutputClosed),
        Err(error) => Err(ClientError::Usage(format!("cannot write to standard output: {error}"))),
    }
}

/// What a path segment may hold as it is: RFC 3986's unreserved characters but `.`, which
/// could make a dot segment. A job id (hex digits and hyphens) then travels, and shows in
/// jobd's logs, as typed.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// An id as one path segment, whatever the user typed.
fn path_segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, SEGMENT).to_string()
}

/// The fields a person looks for first, in this order; the rest follow alphabetically.
const LEADING_FIELDS: [&str; 6] = ["id", "kind", "state", "attempts", "max_attempts", "last_error"];

/// One job's record, a field a line, every value and name stripped of control characters.
fn record_text(record: &Value) -> String {
    let Some(fields) = record.as_object() else {
        return format!("{}\n", printable(&record.to_string()));
    };
    let leading = LEADING_FIELDS.iter().filter_map(|name| fields.get_key_value(*name));
    let rest = fields.iter().filter(|(name, _)| !LEADING_FIELDS.contains(&name.as_str()));
    let mut text = String::new();
    for (name, value) in leading.chain(rest) {
        let value = match value {
            Value::String(text) => printable(text),
            Value::Null => "-".to_owned(),
            other => printable(&other.to_string()),
        };
        text.push_str(&format!("{}: {value}\n", printable(name)));
    }
    text
}

/// A page of jobs as a table; the last error, the last column, is printed whole.
fn list_text(page: &Value) -> String {
    let records = page["jobs"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut text =
        format!("{:<36}  {:<10}  {:<9}  {:>8}  {:<24}  LAST ERROR\n", "ID", "KIND", "STATE", "ATTEMPTS", "CREATED");
    for record in records {
        let field = |name: &str| printable(record[name].as_str().unwrap_or("?"));
        text.push_str(&format!(
            "{:<36}  {:<10}  {:<9}  {:>8}  {:<24}  {}\n",
            field("id"),
            field("kind"),
            field("state"),
            format!("{}/{}", record["attempts"], record["max_attempts"]),
            field("created_at"),
            printable(record["last_error"].as_str().unwrap_or("")),
        ));
    }
    match page["next_cursor"].as_str() {
        Some(cursor) => text.push_str(&format!("more: --cursor {}\n", printable(cursor))),
        None => {
            let noun = if records.len() == 1 { "job" } else { "jobs" };
            text.push_str(&format!("({} {noun}, no more)\n", records.len()));
        }
    }
    text
}

/// Runs `jobd stats`, once or every `watch` seconds until interrupted.
pub async fn stats(connection: ConnectionArgs, watch: Option<u64>) -> Result<Exit, ClientError> {
    let client = Client::new(&connection)?;
    let redraw = watch.is_some() && connection.output == Output::Text && std::io::stdout().is_terminal();
    loop {
        let stats = client.get_json("/v1/stats", &[]).await?;
        let text = match connection.output {
            Output::Json => format!("{stats}\n"),
            // Clears the screen and homes the cursor, so each refresh replaces the last.
            Output::Text if redraw => format!("\x1b[2J\x1b[H{}", stats_text(&stats)),
            Output::Text => stats_text(&stats),
        };
        emit(&text)?;
        let Some(every) = watch else { return Ok(Exit::Success) };
        tokio::time::sleep(Duration::from_secs(every.max(1))).await;
    }
}

fn stats_text(stats: &Value) -> String {
    let (queue, counters) = (&stats["queue"], &stats["counters"]);
    let queue_fields = [
        ("queued", "queued"),
        ("scheduled", "scheduled"),
        ("running", "running"),
        ("failed", "failed"),
        ("dead", "dead"),
    ];
    let capacity = format!("(capacity {})", count(&queue["capacity"]));
    let restarts = format!("(restarts {})", count(&counters["workers"]["restarts"]));
    let job_fields = [("accepted", "accepted"), ("succeeded", "succeeded"), ("failed", "failed"), ("dead", "dead")];
    let refusals = [
        ("queue full", "queue_full"),
        ("invalid", "invalid"),
        ("too large", "too_large"),
        ("unavailable", "unavailable"),
    ];
    let at = stats["at"].as_str().map(printable).unwrap_or_else(|| "?".to_owned());
    let nodes = count(&stats["cluster"]["nodes"]);
    // Whose figures: a shared queue's depth is the whole cluster's, the rest this node's.
    let header = if stats["scope"]["queue"] == "cluster" {
        format!("at {at}: the queue is the cluster's ({nodes} nodes); workers, jobs and rates are this node's\n")
    } else {
        format!("at {at}\n")
    };
    let rates = &stats["rates"];
    let rates_line = if rates.is_object() {
        let rate = |field: &str| format!("{}/s", separated_rate(rates[field].as_f64().unwrap_or(0.0)));
        format!(
            "rates      accepted {}  succeeded {}  failed {}  dead {}  (last {:.0} s)\n",
            rate("accepted_per_second"),
            rate("succeeded_per_second"),
            rate("failed_per_second"),
            rate("dead_per_second"),
            rates["over_secs"].as_f64().unwrap_or(0.0)
        )
    } else {
        "rates      - (jobd has just started)\n".to_owned()
    };
    [
        header,
        stats_line("queue", queue, &queue_fields, &capacity),
        stats_line("workers", &counters["workers"], &[("busy", "busy"), ("idle", "idle"), ("of", "total")], &restarts),
        stats_line("jobs", &counters["jobs"], &job_fields, "(since start)"),
        rates_line,
        stats_line("refused", &counters["rejected"], &refusals, ""),
    ]
    .concat()
}

/// A rate with one decimal below 10 and none above, thousands separated.
fn separated_rate(rate: f64) -> String {
    if rate < 10.0 { format!("{rate:.1}") } else { separated(rate.round() as u64) }
}

/// A count with thousands separated by commas: 1,234,567.
fn separated(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// One line of `jobd stats`: a label, each `(name, field)` of `object` as `name value`,
/// then a note.
fn stats_line(label: &str, object: &Value, fields: &[(&str, &str)], note: &str) -> String {
    let figures: Vec<String> =
        fields.iter().map(|(name, field)| format!("{name} {}", separated(count(&object[*field])))).collect();
    let line = format!("{label:<10} {}  {note}", figures.join("  "));
    format!("{}\n", line.trim_end())
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_say_when_and_whose_with_rates_and_separated_figures() {
        let stats = serde_json::json!({
            "at": "2026-12-07T18:00:00.000Z",
            "scope": {"queue": "cluster", "counters": "node"},
            "cluster": {"nodes": 2},
            "queue": {"queued": 1234567, "capacity": 1000000},
            "counters": {"jobs": {"accepted": 5000}, "workers": {}, "rejected": {}},
            "rates": {"over_secs": 10.0, "accepted_per_second": 12345.0, "succeeded_per_second": 2.5,
                      "failed_per_second": 0.0, "dead_per_second": 0.0},
        });
        let text = stats_text(&stats);
        assert!(text.starts_with("at 2026-12-07T18:00:00.000Z: the queue is the cluster's (2 nodes)"), "{text}");
        assert!(text.contains("queued 1,234,567") && text.contains("accepted 5,000"), "{text}");
        assert!(text.contains("accepted 12,345/s  succeeded 2.5/s") && text.contains("(last 10 s)"), "{text}");
        let young = serde_json::json!({"at": "x", "scope": {"queue": "node"}, "rates": null});
        assert!(stats_text(&young).contains("rates      - (jobd has just started)"));
    }

    #[test]
    fn an_id_travels_as_typed_and_anything_else_stays_one_segment() {
        assert_eq!(path_segment("01a24e15-7230-7d21-9f7e-3c8e5f1a2b3c"), "01a24e15-7230-7d21-9f7e-3c8e5f1a2b3c");
        assert_eq!(path_segment("../x?y#z"), "%2E%2E%2Fx%3Fy%23z");
    }

    #[test]
    fn a_record_prints_what_a_person_looks_for_first_without_control_characters() {
        let record = serde_json::json!({
            "created_at": "2026-12-07T18:00:00Z", "id": "x", "kind": "upload", "state": "dead\u{1b}[31m",
            "attempts": 3, "last_error": "boom\nnext", "result": null
        });
        let text = record_text(&record);
        let names: Vec<&str> = text.lines().filter_map(|line| line.split(':').next()).collect();
        assert_eq!(names[..4], ["id", "kind", "state", "attempts"], "{text}");
        assert!(!text.contains('\u{1b}') && text.contains("last_error: boom next"), "{text}");
        let page = serde_json::json!({"jobs": [record], "next_cursor": "c\u{7}ursor"});
        let list = list_text(&page);
        assert!(!list.contains('\u{7}') && !list.contains('\u{1b}') && list.contains("boom next"), "{list}");
    }
}
