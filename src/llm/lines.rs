//! Lines out of a streamed body whose chunks end anywhere.
//!
//! NDJSON (Ollama) and server-sent events (OpenAI) are both line protocols, but the network
//! cuts the body wherever it likes: in the middle of a line, of a JSON string, or of a
//! multi-byte UTF-8 character. Bytes are kept until a line is complete; only then is it decoded.

use super::LlmError;

/// Longest line accepted (a runaway server must not grow the buffer without end).
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: Vec<u8>,
}

impl LineBuffer {
    pub fn new() -> LineBuffer {
        LineBuffer::default()
    }

    /// Adds a chunk and returns the lines it completed, without their `\n` (or `\r\n`).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, LlmError> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            lines.push(self.take()?);
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() > MAX_LINE {
            return Err(LlmError::Protocol(format!(
                "a line of the stream is longer than {MAX_LINE} bytes"
            )));
        }
        Ok(lines)
    }

    /// What is left when the body ends: a last line without its newline, if any.
    pub fn finish(&mut self) -> Result<Option<String>, LlmError> {
        if self.pending.iter().all(u8::is_ascii_whitespace) {
            self.pending.clear();
            return Ok(None);
        }
        self.take().map(Some)
    }

    fn take(&mut self) -> Result<String, LlmError> {
        let mut bytes = std::mem::take(&mut self.pending);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        String::from_utf8(bytes)
            .map_err(|_| LlmError::Protocol("a line of the stream is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_anywhere_even_inside_a_character_come_out_whole() -> Result<(), LlmError> {
        let body = "{\"a\":\"caf\u{e9} \u{1f600}\"}\r\n{\"b\":2}\n{\"c\":3}";
        let bytes = body.as_bytes();
        // Every split point, including the middle of the two- and four-byte characters.
        for cut in 0..=bytes.len() {
            let mut buffer = LineBuffer::new();
            let mut lines = buffer.push(&bytes[..cut])?;
            lines.extend(buffer.push(&bytes[cut..])?);
            lines.extend(buffer.finish()?);
            assert_eq!(
                lines,
                ["{\"a\":\"caf\u{e9} \u{1f600}\"}", "{\"b\":2}", "{\"c\":3}"],
                "cut at {cut}"
            );
        }
        Ok(())
    }

    #[test]
    fn one_byte_at_a_time_and_blank_tails() -> Result<(), LlmError> {
        let mut buffer = LineBuffer::new();
        let mut lines = Vec::new();
        for b in "data: x\n\ndata: y\n  ".bytes() {
            lines.extend(buffer.push(&[b])?);
        }
        assert_eq!(buffer.finish()?, None);
        assert_eq!(lines, ["data: x", "", "data: y"]);
        Ok(())
    }

    #[test]
    fn invalid_utf8_and_runaway_lines_are_errors() {
        let mut buffer = LineBuffer::new();
        assert!(buffer.push(b"\xff\xfe\n").is_err());
        let mut buffer = LineBuffer::new();
        assert!(buffer.push(&vec![b'x'; MAX_LINE + 1]).is_err());
    }
}
