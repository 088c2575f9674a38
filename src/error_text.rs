//! How an error reads in logs and messages: with every cause under it. Clients' own
//! messages ("error sending request", "error connecting to server") leave out the cause
//! (a refused connection, a timeout, a certificate), which is the part a reader needs.

/// `error` and its causes, `: `-separated; a cause whose text the message already holds
/// is not repeated.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn causes_follow_the_message_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(with_causes(&Outer(refused)), "outer: connection refused");
        let repeated = std::io::Error::other("outer");
        assert_eq!(with_causes(&Outer(repeated)), "outer", "a cause the message holds is not repeated");
    }
}
