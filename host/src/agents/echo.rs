//! The `echo` agent: replies `"echo: "` + the user messages since the last assistant message
//! (joined by newlines), streamed as a few parts. For demos and tests; needs no network.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AgentError, AgentReply, Role, RunInput, send_part};

/// How many parts the reply is streamed in (at most).
const PARTS: usize = 3;

/// The built-in echo agent.
#[derive(Debug, Clone)]
pub struct EchoAgent {
    name: String,
}

impl EchoAgent {
    /// An echo agent called `name` (for logs).
    pub fn new(name: &str) -> EchoAgent {
        EchoAgent {
            name: name.to_string(),
        }
    }

    /// The reply text for `input`: `"echo: "` + the user messages after the last assistant
    /// message, each followed by a line per attachment, joined by `\n` (system messages are
    /// skipped).
    pub fn reply_text(input: &RunInput) -> String {
        let start = input
            .messages
            .iter()
            .rposition(|m| m.role == Role::Assistant)
            .map_or(0, |i| i + 1);
        // Each message with the lines naming its attachments (kind, name, type, size).
        let said: Vec<String> = input.messages[start..]
            .iter()
            .filter(|m| m.role == Role::User)
            .map(|m| {
                std::iter::once(m.body.clone())
                    .chain(m.attachment_lines())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        format!("echo: {}", said.join("\n"))
    }

    /// Streams [`EchoAgent::reply_text`] as up to three parts and returns it (no usage).
    pub async fn run(
        &self,
        input: &RunInput,
        parts: mpsc::Sender<String>,
        cancel: CancellationToken,
    ) -> Result<AgentReply, AgentError> {
        if cancel.is_cancelled() {
            return Err(AgentError::Cancelled);
        }
        let text = EchoAgent::reply_text(input);
        for part in split_parts(&text, PARTS) {
            send_part(&parts, &cancel, part.to_string()).await?;
        }
        tracing::debug!(
            agent = %self.name,
            session_id = %input.session_id,
            run_id = %input.run_id,
            chars = text.chars().count(),
            "echo reply"
        );
        Ok(AgentReply { text, usage: None })
    }
}

/// Splits `text` into at most `n` non-empty pieces of about equal length, on char boundaries.
fn split_parts(text: &str, n: usize) -> Vec<&str> {
    let chars = text.chars().count();
    let per = chars.div_ceil(n.max(1)).max(1);
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    let mut count = 0;
    for (i, _) in text.char_indices() {
        if count == per {
            out.push(&text[start..i]);
            start = i;
            count = 0;
        }
        count += 1;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split_parts;

    #[test]
    fn parts_cover_the_text_on_char_boundaries() {
        for text in ["echo: hello world", "echo: 你好，世界", "echo: ", "ab"] {
            let parts = split_parts(text, 3);
            assert_eq!(parts.concat(), text);
            assert!(parts.len() <= 3 && parts.iter().all(|p| !p.is_empty()));
        }
        assert_eq!(split_parts("echo: hello world", 3).len(), 3);
    }
}
