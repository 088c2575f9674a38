//! `jobd submit`: JSON lines from a file or standard input, sent in batches by a few
//! requests in flight, waiting out `429` and `503` as `Retry-After` asks, with progress
//! and a final count of what was accepted, refused and failed.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;

use super::progress::Progress;
use super::{Client, ClientError, ConnectionArgs, Exit, Output};

/// The largest request body `jobd submit` sends: half of jobd's default `max_body_bytes`.
const MAX_REQUEST_BYTES: usize = 4 << 20;
/// The longest line it accepts; a longer one is refused without being sent.
const MAX_LINE_BYTES: usize = MAX_REQUEST_BYTES - 1024;
/// How often a request that could not be delivered is tried before its jobs count as failed.
const DELIVERY_TRIES: u32 = 6;
/// The longest wait a `Retry-After` may ask for; a longer one is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// After this many `429`s in a row a batch of several jobs is split: a batch larger than
/// the room the queue ever has would otherwise wait for ever.
const FULL_ANSWERS_BEFORE_SPLIT: u32 = 3;

/// `jobd submit`'s options.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The JSON lines to submit: a file, or `-` for standard input.
    #[arg(default_value = "-")]
    pub input: PathBuf,
    /// Each line is a payload for an `upload` job, rather than a whole job.
    #[arg(long)]
    pub payloads: bool,
    /// Jobs per request (at most jobd's max_jobs_per_request, 10,000 by default).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Requests in flight at once. With at most 4 MiB per batch, one batch read ahead and
    /// one in flight (its lines and its request body) per request bound the memory a run
    /// holds: about 30 MiB at 2, 200 MiB at 16.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub parallel: u32,
    /// Append `<line number> <job id>` to this file for each accepted job.
    #[arg(long, value_name = "FILE")]
    pub ids_file: Option<PathBuf>,
    /// Give each job without a key of its own the idempotency key
    /// `<RUN>:<line number>:<digest of the line>`: running the same input again with the
    /// same RUN (after an interruption, say) creates no duplicates.
    #[arg(long, value_name = "RUN")]
    pub idempotency_from_line: Option<String>,
    /// Print no progress, only the final counts.
    #[arg(long)]
    pub quiet: bool,
}

/// One input line on its way: its number and the job it became, as JSON text.
struct Line {
    number: u64,
    job: String,
}

/// What the whole run did.
#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    waits: AtomicU64,
    /// A refusal that every later request would get too (401, 403): stop reading.
    fatal: Mutex<Option<ClientError>>,
    stop: AtomicBool,
}

impl Tally {
    fn refuse(&self, number: u64, why: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        eprintln!("jobd: line {number} refused: {}", super::printable(why));
    }
}

/// Runs `jobd submit`.
pub async fn submit(connection: ConnectionArgs, args: SubmitArgs) -> Result<Exit, ClientError> {
    let client = Client::new(&connection)?;
    if let Some(run) = &args.idempotency_from_line
        && (run.is_empty() || run.len() > 200 || run.chars().any(char::is_control))
    {
        return Err(ClientError::Usage("--idempotency-from-line takes a name of 1 to 200 visible bytes".to_owned()));
    }
    let from_stdin = args.input.as_os_str() == "-";
    let (input, total): (Box<dyn Read + Send>, Option<u64>) = if from_stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let open = || {
            std::fs::File::open(&args.input)
                .map_err(|error| ClientError::Usage(format!("cannot read {}: {error}", args.input.display())))
        };
        let file = open()?;
        // Only a regular file can be read twice; a pipe or a device is read once, without
        // a total.
        let regular = file.metadata().is_ok_and(|metadata| metadata.is_file());
        let total = if regular { Some(count_lines(file)?) } else { None };
        (Box::new(open()?), total)
    };
    let ids_file = match &args.ids_file {
        Some(path) => Some(Arc::new(Mutex::new(open_ids_file(path)?))),
        None => None,
    };

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    // The reader runs on a thread of its own, so a slow standard input never stalls the
    // requests in flight; the channel bounds the batches read ahead to one per sender.
    let (batches, receiver) = tokio::sync::mpsc::channel::<Vec<Line>>(args.parallel as usize);
    let reader = {
        let (tally, args) = (tally.clone(), args.clone());
        std::thread::spawn(move || read_batches(input, &args, &tally, &batches))
    };
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let keyed = args.idempotency_from_line.is_some();
    let senders: Vec<_> = (0..args.parallel)
        .map(|_| {
            let (client, tally, receiver, ids_file) =
                (client.clone(), tally.clone(), receiver.clone(), ids_file.clone());
            tokio::spawn(async move {
                loop {
                    let Some(batch) = receiver.lock().await.recv().await else { return };
                    deliver(&client, batch, keyed, &tally, ids_file.as_deref()).await;
                }
            })
        })
        .collect();
    let progress = (!args.quiet).then(|| Progress::start(tally_counter(&tally), total));
    for sender in senders {
        drop(sender.await);
    }
    drop(reader.join());
    if let Some(progress) = progress {
        progress.finish();
    }
    if let Some(error) = tally.fatal.lock().map(|mut fatal| fatal.take()).unwrap_or(None) {
        return Err(error);
    }
    let (accepted, refused, failed, waits) = (
        tally.accepted.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.waits.load(Ordering::Relaxed),
    );
    let seconds = started.elapsed().as_secs_f64();
    let summary = match connection.output {
        Output::Json => format!(
            "{}\n",
            serde_json::json!({"accepted": accepted, "refused": refused, "failed": failed, "waits": waits, "seconds": seconds})
        ),
        Output::Text => format!(
            "accepted {accepted}, refused {refused}, failed {failed} in {seconds:.1} s (waited {waits} times on 429/503)\n"
        ),
    };
    // A closed output loses only the summary: the jobs were sent, and the exit status
    // below still says how it went.
    match super::commands::emit(&summary) {
        Ok(()) | Err(ClientError::OutputClosed) => {}
        Err(error) => return Err(error),
    }
    Ok(if failed > 0 {
        Exit::Unreachable
    } else if refused > 0 {
        Exit::Refused
    } else {
        Exit::Success
    })
}

/// Opens the ids file for appending. A run killed while writing may have left half a
/// line: it is ended first, so that the next line starts on a line of its own.
fn open_ids_file(path: &std::path::Path) -> Result<std::fs::File, ClientError> {
    use std::io::{Seek as _, SeekFrom};
    let failed = |error: std::io::Error| ClientError::Usage(format!("cannot open {}: {error}", path.display()));
    let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path).map_err(failed)?;
    if file.metadata().map_err(failed)?.len() > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::End(-1)).map_err(failed)?;
        file.read_exact(&mut last).map_err(failed)?;
        if last[0] != b'\n' {
            file.write_all(b"\n").map_err(failed)?;
        }
    }
    Ok(file)
}

fn tally_counter(tally: &Arc<Tally>) -> impl Fn() -> u64 + Send + 'static {
    let tally = tally.clone();
    move || {
        tally.accepted.load(Ordering::Relaxed)
            + tally.refused.load(Ordering::Relaxed)
            + tally.failed.load(Ordering::Relaxed)
    }
}

/// Counts the lines of a file, for the progress line's ETA.
fn count_lines(mut file: std::fs::File) -> Result<u64, ClientError> {
    let mut buffer = vec![0u8; 1 << 16];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let read =
            file.read(&mut buffer).map_err(|error| ClientError::Usage(format!("cannot read the input: {error}")))?;
        if read == 0 {
            return Ok(lines + u64::from(last != b'\n'));
        }
        lines += buffer[..read].iter().filter(|&&byte| byte == b'\n').count() as u64;
        last = buffer[read - 1];
    }
}

/// Reads lines into batches of jobs until the input ends or the run stops.
fn read_batches(
    input: Box<dyn Read + Send>,
    args: &SubmitArgs,
    tally: &Tally,
    batches: &tokio::sync::mpsc::Sender<Vec<Line>>,
) {
    let mut input = BufReader::with_capacity(1 << 16, input);
    let (mut batch, mut batch_bytes, mut number) = (Vec::new(), 0usize, 0u64);
    let mut raw = Vec::new();
    loop {
        if tally.stop.load(Ordering::Relaxed) {
            return;
        }
        raw.clear();
        // `take` bounds the memory one line can hold, however long it is.
        let read = match (&mut input).take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut raw) {
            Ok(read) => read,
            Err(error) => {
                eprintln!("jobd: reading the input failed after line {number}: {error}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        if read == 0 {
            break;
        }
        number += 1;
        if raw.len() > MAX_LINE_BYTES && raw.last() != Some(&b'\n') {
            tally.refuse(number, &format!("longer than {MAX_LINE_BYTES} bytes"));
            skip_rest_of_line(&mut input);
            continue;
        }
        let text = match std::str::from_utf8(&raw) {
            Ok(text) => text.trim(),
            Err(_) => {
                tally.refuse(number, "not UTF-8");
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        let job = match job_of_line(text, number, args) {
            Ok(job) => job,
            Err(why) => {
                tally.refuse(number, &why);
                continue;
            }
        };
        if !batch.is_empty() && (batch.len() >= args.batch as usize || batch_bytes + job.len() > MAX_REQUEST_BYTES) {
            batch_bytes = 0;
            if batches.blocking_send(std::mem::take(&mut batch)).is_err() {
                return;
            }
        }
        batch_bytes += job.len() + 1;
        batch.push(Line { number, job });
    }
    if !batch.is_empty() {
        drop(batches.blocking_send(batch));
    }
}

fn skip_rest_of_line(input: &mut impl std::io::BufRead) {
    let mut sink = Vec::new();
    loop {
        sink.clear();
        match input.take(1 << 16).read_until(b'\n', &mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) if sink.last() == Some(&b'\n') => return,
            Ok(_) => {}
        }
    }
}

/// The job a line stands for, as JSON text: the line itself, or an `upload` job around
/// it with `--payloads`; with `--idempotency-from-line`, a key derived from the line. The
/// line's bytes are kept as they are: a payload is stored exactly as written.
fn job_of_line(text: &str, number: u64, args: &SubmitArgs) -> Result<String, String> {
    let key = args.idempotency_from_line.as_deref().map(|run| line_key(run, number, text));
    if args.payloads {
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|error| format!("not JSON: {error}"))?;
        return Ok(match key {
            Some(key) => format!(r#"{{"kind":"upload","idempotency_key":{},"payload":{text}}}"#, quoted(&key)),
            None => format!(r#"{{"kind":"upload","payload":{text}}}"#),
        });
    }
    /// A job line's own key, if it has one; every other field is only checked to be JSON.
    #[derive(serde::Deserialize)]
    struct OwnKey {
        idempotency_key: Option<serde::de::IgnoredAny>,
    }
    if !text.starts_with('{') {
        return Err("a job must be a JSON object with \"kind\" (use --payloads for payloads)".to_owned());
    }
    let own = serde_json::from_str::<OwnKey>(text).map_err(|error| format!("not JSON: {error}"))?;
    match key {
        Some(key) if own.idempotency_key.is_none() => {
            let rest = text[1..].trim_start();
            let separator = if rest.starts_with('}') { "" } else { "," };
            Ok(format!(r#"{{"idempotency_key":{}{separator}{rest}"#, quoted(&key)))
        }
        _ => Ok(text.to_owned()),
    }
}

fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

/// `<run>:<line number>:<first 16 hex digits of the line's SHA-256>`: the same line of the
/// same run always gets the same key, and an edited line a new one.
fn line_key(run: &str, number: u64, text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let hex: String = digest.as_ref()[..8].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{run}:{number}:{hex}")
}

/// Sends one batch until it is accepted, its bad lines refused, or it cannot be delivered.
async fn deliver(
    client: &Client,
    mut batch: Vec<Line>,
    keyed: bool,
    tally: &Tally,
    ids_file: Option<&Mutex<std::fs::File>>,
) {
    let (mut failures, mut full_answers) = (0u32, 0u32);
    while !batch.is_empty() && !tally.stop.load(Ordering::Relaxed) {
        let mut body = Vec::with_capacity(batch.iter().map(|line| line.job.len() + 1).sum::<usize>() + 16);
        body.extend_from_slice(b"{\"jobs\":[");
        for (at, line) in batch.iter().enumerate() {
            if at > 0 {
                body.push(b',');
            }
            body.extend_from_slice(line.job.as_bytes());
        }
        body.extend_from_slice(b"]}");
        let answer = match client.send(reqwest::Method::POST, "/v1/jobs", &[], Some(body)).await {
            Ok(answer) => answer,
            Err(error) => {
                // A request that may have reached jobd is sent again only when every job
                // has a key: otherwise a second copy could be created.
                let safe = keyed || matches!(error, ClientError::Unreachable { refused_connection: true, .. });
                failures += 1;
                if !safe || failures >= DELIVERY_TRIES {
                    give_up(&batch, tally, &error.to_string());
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1 << failures.min(4))).await;
                continue;
            }
        };
        match answer.status {
            status if (200..300).contains(&status) => {
                record_accepted(&batch, &answer.body, tally, ids_file);
                return;
            }
            429 => {
                tally.waits.fetch_add(1, Ordering::Relaxed);
                full_answers += 1;
                if full_answers >= FULL_ANSWERS_BEFORE_SPLIT && batch.len() > 1 {
                    full_answers = 0;
                    let second = batch.split_off(batch.len() / 2);
                    Box::pin(deliver(client, second, keyed, tally, ids_file)).await;
                }
                wait_as_asked(answer.retry_after).await;
            }
            // Every 503 but one says that nothing was enqueued; after that one, only a
            // batch whose jobs all carry keys may be sent again.
            503 if keyed || answer.problem_type().as_deref() != Some("/problems/outcome-unknown") => {
                tally.waits.fetch_add(1, Ordering::Relaxed);
                wait_as_asked(answer.retry_after).await;
            }
            401 => {
                stop(tally, answer.problem());
                return;
            }
            status if status >= 500 => {
                failures += 1;
                if !keyed || failures >= DELIVERY_TRIES {
                    give_up(&batch, tally, &answer.problem().to_string());
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1 << failures.min(4))).await;
            }
            status => {
                let named = named_jobs(&answer.body);
                if named.is_empty() {
                    if status == 403 {
                        // The token lacks the scope: every request would be refused.
                        stop(tally, answer.problem());
                        return;
                    }
                    if matches!(status, 400 | 408 | 413) && batch.len() > 1 {
                        // Too large, or a fault the problem cannot place (JSON nested too
                        // deep): each half is sent on its own, down to the line at fault.
                        let second = batch.split_off(batch.len() / 2);
                        Box::pin(deliver(client, second, keyed, tally, ids_file)).await;
                        continue;
                    }
                    // Anything else (a wrong --url's 404, a redirect) refuses the batch.
                    let why = answer.problem().to_string();
                    for line in &batch {
                        tally.refuse(line.number, &why);
                    }
                    return;
                }
                // The request is atomic: the jobs it names are refused, the rest sent again.
                let before = batch.len();
                let mut index = 0;
                batch.retain(|line| {
                    let refused = named.iter().find(|(at, _)| *at == index);
                    index += 1;
                    match refused {
                        Some((_, why)) => {
                            tally.refuse(line.number, why);
                            false
                        }
                        None => true,
                    }
                });
                if batch.len() == before {
                    // The problem named no job of this batch: sending it again would only
                    // be refused again.
                    let why = answer.problem().to_string();
                    for line in &batch {
                        tally.refuse(line.number, &why);
                    }
                    return;
                }
            }
        }
    }
}

/// Waits as a `Retry-After` asks, one second when it asks nothing, at most a minute.
async fn wait_as_asked(retry_after: Option<Duration>) {
    tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1)).min(MAX_RETRY_AFTER)).await;
}

fn stop(tally: &Tally, error: ClientError) {
    tally.stop.store(true, Ordering::Relaxed);
    if let Ok(mut fatal) = tally.fatal.lock() {
        fatal.get_or_insert(error);
    }
}

fn give_up(batch: &[Line], tally: &Tally, why: &str) {
    tally.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let (first, last) = (batch.first().map_or(0, |line| line.number), batch.last().map_or(0, |line| line.number));
    eprintln!("jobd: lines {first} to {last} failed (they may or may not have been accepted): {why}");
}

/// The jobs a problem names by index (`{"index": 3, "field": "kind", ...}`), with the
/// message for each.
fn named_jobs(body: &[u8]) -> Vec<(usize, String)> {
    let Ok(problem) = serde_json::from_slice::<serde_json::Value>(body) else { return Vec::new() };
    let mut named = Vec::new();
    for error in problem["errors"].as_array().into_iter().flatten() {
        let Some(index) = error["index"].as_u64().and_then(|index| usize::try_from(index).ok()) else { continue };
        let field = error["field"].as_str().unwrap_or("");
        let message = error["message"].as_str().unwrap_or("refused");
        named.push((index, format!("{field}: {message}")));
    }
    named
}

/// Counts an accepted batch and writes its ids. An answer that does not name one job per
/// line (a proxy's page, say) leaves the batch's fate unknown: it counts as failed.
fn record_accepted(batch: &[Line], body: &[u8], tally: &Tally, ids_file: Option<&Mutex<std::fs::File>>) {
    let answer: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let ids: Vec<&str> = answer["jobs"].as_array().into_iter().flatten().filter_map(|job| job["id"].as_str()).collect();
    if ids.len() != batch.len() {
        give_up(batch, tally, &format!("the answer named {} jobs for {} lines", ids.len(), batch.len()));
        return;
    }
    tally.accepted.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let Some(ids_file) = ids_file else { return };
    let mut text = String::with_capacity(batch.len() * 48);
    for (line, id) in batch.iter().zip(ids) {
        text.push_str(&format!("{} {}\n", line.number, super::printable(id)));
    }
    // Written per batch, so that an interrupted run leaves every id it was given.
    let written = ids_file
        .lock()
        .map_err(|_| std::io::Error::other("the ids file's lock is poisoned"))
        .and_then(|mut file| file.write_all(text.as_bytes()));
    if let Err(error) = written {
        eprintln!("jobd: cannot write the ids file: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(payloads: bool, run: Option<&str>) -> SubmitArgs {
        SubmitArgs {
            input: PathBuf::from("-"),
            payloads,
            batch: 10,
            parallel: 1,
            ids_file: None,
            idempotency_from_line: run.map(str::to_owned),
            quiet: true,
        }
    }

    #[test]
    fn a_payload_line_becomes_an_upload_job_with_its_bytes_unchanged() {
        let job = job_of_line(r#"{"b":2,  "a":1.50}"#, 7, &args(true, None)).expect("a job");
        assert_eq!(job, r#"{"kind":"upload","payload":{"b":2,  "a":1.50}}"#);
    }

    #[test]
    fn a_key_from_the_line_is_added_unless_the_job_has_one() {
        let job = job_of_line(r#"{"kind":"noop"}"#, 3, &args(false, Some("run1"))).expect("a job");
        let value: serde_json::Value = serde_json::from_str(&job).expect("JSON");
        assert!(value["idempotency_key"].as_str().expect("a key").starts_with("run1:3:"));
        let own =
            job_of_line(r#"{"kind":"noop","idempotency_key":"mine"}"#, 3, &args(false, Some("run1"))).expect("a job");
        assert!(own.contains(r#""idempotency_key":"mine""#) && !own.contains("run1"));
        let empty = job_of_line("{ }", 1, &args(false, Some("r"))).expect("a job");
        assert!(serde_json::from_str::<serde_json::Value>(&empty).is_ok(), "{empty}");
    }

    #[test]
    fn the_same_line_gets_the_same_key_and_a_changed_line_another() {
        assert_eq!(line_key("r", 1, "a"), line_key("r", 1, "a"));
        assert_ne!(line_key("r", 1, "a"), line_key("r", 1, "b"));
        assert_ne!(line_key("r", 1, "a"), line_key("r", 2, "a"));
    }

    #[test]
    fn bad_lines_are_refused_with_a_reason() {
        assert!(job_of_line("[1]", 1, &args(false, None)).is_err());
        assert!(job_of_line("{nope", 1, &args(false, None)).is_err());
        assert!(job_of_line("{nope", 1, &args(true, None)).is_err());
    }

    #[test]
    fn problems_name_the_jobs_they_refuse() {
        let body = br#"{"errors":[{"index":2,"field":"kind","message":"unknown"},{"field":"query","message":"x"}]}"#;
        assert_eq!(named_jobs(body), vec![(2, "kind: unknown".to_owned())]);
    }
}
