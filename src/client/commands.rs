//! `jobd jobs get|list|retry|cancel` and `jobd stats [--watch]`: one request each (one per
//! refresh), printed for a person or as JSON.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use serde_json::Value;

use super::{Client, ClientError, ConnectionArgs, Exit, JobsCommand, Output, printable};

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
    match connection.output {
        Output::Json => println!("{answer}"),
        Output::Text => match command {
            JobsCommand::List { .. } => print_list(&answer),
            _ => print_record(&answer),
        },
    }
    Ok(Exit::Success)
}

/// An id as one path segment, whatever the user typed.
fn path_segment(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn print_record(record: &Value) {
    if let Some(fields) = record.as_object() {
        for (name, value) in fields {
            match value {
                Value::String(text) => println!("{name}: {}", printable(text)),
                Value::Null => println!("{name}: -"),
                other => println!("{name}: {}", printable(&other.to_string())),
            }
        }
    }
}

fn print_list(page: &Value) {
    let records = page["jobs"].as_array().map(Vec::as_slice).unwrap_or_default();
    println!("{:<36}  {:<10}  {:<9}  {:>8}  {:<24}  LAST ERROR", "ID", "KIND", "STATE", "ATTEMPTS", "CREATED");
    for record in records {
        let error = record["last_error"].as_str().unwrap_or("");
        let error: String = error.chars().take(60).map(|c| if c.is_control() { ' ' } else { c }).collect();
        println!(
            "{:<36}  {:<10}  {:<9}  {:>8}  {:<24}  {error}",
            printable(record["id"].as_str().unwrap_or("?")),
            printable(record["kind"].as_str().unwrap_or("?")),
            record["state"].as_str().unwrap_or("?"),
            format!("{}/{}", record["attempts"], record["max_attempts"]),
            record["created_at"].as_str().unwrap_or("?"),
        );
    }
    match page["next_cursor"].as_str() {
        Some(cursor) => println!("more: --cursor {cursor}"),
        None => println!("({} jobs, no more)", records.len()),
    }
}

/// Runs `jobd stats`, once or every `watch` seconds until interrupted.
pub async fn stats(connection: ConnectionArgs, watch: Option<u64>) -> Result<Exit, ClientError> {
    let client = Client::new(&connection)?;
    let redraw = watch.is_some() && connection.output == Output::Text && std::io::stdout().is_terminal();
    loop {
        let stats = client.get_json("/v1/stats", &[]).await?;
        match connection.output {
            Output::Json => println!("{stats}"),
            Output::Text => {
                if redraw {
                    // Clears the screen and homes the cursor, so each refresh replaces the last.
                    print!("\x1b[2J\x1b[H");
                }
                print_stats(&stats);
            }
        }
        drop(std::io::stdout().flush());
        let Some(every) = watch else { return Ok(Exit::Success) };
        tokio::time::sleep(Duration::from_secs(every.max(1))).await;
    }
}

fn print_stats(stats: &Value) {
    let (queue, counters) = (&stats["queue"], &stats["counters"]);
    let queue_fields = [
        ("queued", "queued"),
        ("scheduled", "scheduled"),
        ("running", "running"),
        ("failed", "failed"),
        ("dead", "dead"),
    ];
    let capacity = format!("(capacity {})", count(&queue["capacity"]));
    stats_line("queue", queue, &queue_fields, &capacity);
    let restarts = format!("(restarts {})", count(&counters["workers"]["restarts"]));
    stats_line("workers", &counters["workers"], &[("busy", "busy"), ("idle", "idle"), ("of", "total")], &restarts);
    let job_fields = [("accepted", "accepted"), ("succeeded", "succeeded"), ("failed", "failed"), ("dead", "dead")];
    stats_line("jobs", &counters["jobs"], &job_fields, "(since start)");
    let refusals = [
        ("queue full", "queue_full"),
        ("invalid", "invalid"),
        ("too large", "too_large"),
        ("unavailable", "unavailable"),
    ];
    stats_line("refused", &counters["rejected"], &refusals, "");
}

/// One line of `jobd stats`: a label, each `(name, field)` of `object` as `name value`,
/// then a note.
fn stats_line(label: &str, object: &Value, fields: &[(&str, &str)], note: &str) {
    let figures: Vec<String> =
        fields.iter().map(|(name, field)| format!("{name} {}", count(&object[*field]))).collect();
    let line = format!("{label:<10} {}  {note}", figures.join("  "));
    println!("{}", line.trim_end());
}

fn count(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}
