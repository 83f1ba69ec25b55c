//! Request-smuggling detection for HTTP/1.x, sans I/O.
//!
//! hyper repairs ambiguous framing instead of refusing it: with both `Content-Length` and
//! `Transfer-Encoding` it drops the length, and duplicate equal lengths are merged, so by the
//! time a request reaches the service the evidence is gone. The sniffer watches the same bytes
//! hyper reads, parses each request head itself (httparse), follows the body framing
//! (`Content-Length` or chunked) to find the next head, and queues one [`Verdict`] per request
//! in order; the service takes one per request and refuses the smuggling ones.

use std::collections::VecDeque;

/// What the sniffer concluded about one request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// More than one `Content-Length`.
    DuplicateLength,
}

#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    /// Framing could not be followed (a head too large or malformed: hyper refuses those and
    /// closes). Nothing more is judged on this connection.
    Off,
}

/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;

/// Follows the framing of the requests on one HTTP/1 connection.
#[derive(Debug)]
pub struct FramingSniffer {
    state: State,
    buffer: Vec<u8>,
    max_head: usize,
    verdicts: VecDeque<Verdict>,
}

impl FramingSniffer {
    /// `max_head`: the largest request head to parse (the server's own limit).
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            buffer: Vec::new(),
            max_head,
            verdicts: VecDeque::new(),
        }
    }

    /// The verdict on the next request, in order; `None` when framing could not be followed.
    pub fn next_verdict(&mut self) -> Option<Verdict> {
        self.verdicts.pop_front()
    }

    /// Bytes as read from the client.
    pub fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Off => return,
                State::Body(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                    &bytes[take..]
                }
                State::ChunkData(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(left)
                    };
                    &bytes[take..]
                }
                State::Head => self.head(bytes),
                State::ChunkSize | State::ChunkDataEnd | State::Trailers => self.line(bytes),
            };
        }
    }

    fn head<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let before = self.buffer.len();
        let room = self.max_head.saturating_sub(before);
        let take = bytes.len().min(room.max(1));
        self.buffer.extend_from_slice(&bytes[..take]);
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&self.buffer) {
            Ok(httparse::Status::Complete(len)) => {
                let (verdict, framing) = judge(request.headers);
                self.verdicts.push_back(verdict);
                self.state = match (verdict, framing) {
                    (Verdict::Clean, Framing::Length(0) | Framing::None) => State::Head,
                    (Verdict::Clean, Framing::Length(n)) => State::Body(n),
                    (Verdict::Clean, Framing::Chunked) => State::ChunkSize,
                    // The connection ends after the refusal; nothing after it matters.
                    _ => State::Off,
                };
                self.buffer.clear();
                // Bytes past the head belong to the body or the next request.
                let used_here = len - before;
                &bytes[used_here.min(bytes.len())..]
            }
            Ok(httparse::Status::Partial) if self.buffer.len() < self.max_head => &bytes[take..],
            _ => {
                self.state = State::Off;
                &[]
            }
        }
    }

    fn line<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
            self.buffer.extend_from_slice(bytes);
            if self.buffer.len() > MAX_LINE {
                self.state = State::Off;
            }
            return &[];
        };
        self.buffer.extend_from_slice(&bytes[..end]);
        let line = std::mem::take(&mut self.buffer);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        self.state = match self.state {
            State::ChunkSize => {
                let size = line.split(|&b| b == b';').next().unwrap_or(b"");
                match std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Off,
                }
            }
            State::ChunkDataEnd => State::ChunkSize,
            State::Trailers if line.is_empty() => State::Head,
            State::Trailers => State::Trailers,
            _ => State::Off,
        };
        &bytes[end + 1..]
    }
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn judge(headers: &[httparse::Header<'_>]) -> (Verdict, Framing) {
    let mut lengths = Vec::new();
    let mut chunked = false;
    let mut transfer_encoding = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            chunked = h
                .value
                .split(|&b| b == b',')
                .next_back()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    if transfer_encoding && !lengths.is_empty() {
        return (Verdict::LengthAndChunked, Framing::None);
    }
    if lengths.len() > 1 {
        return (Verdict::DuplicateLength, Framing::None);
    }
    let framing = if chunked {
        Framing::Chunked
    } else if let Some(value) = lengths.first() {
        match std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
        {
            Some(n) => Framing::Length(n),
            None => Framing::None,
        }
    } else {
        Framing::None
    };
    (Verdict::Clean, framing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(input: &[&[u8]]) -> Vec<Verdict> {
        let mut s = FramingSniffer::new(8192);
        for chunk in input {
            s.observe(chunk);
        }
        std::iter::from_fn(|| s.next_verdict()).collect()
    }

    #[test]
    fn clean_requests_with_every_framing_in_one_stream() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nHELLO\
PUT /g HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nGET /\r\n0\r\nX-T: 1\r\n\r\n\
DELETE /f HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdicts(&[stream]), vec![Verdict::Clean; 4]);
        // The same stream a byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(verdicts(&bytes), vec![Verdict::Clean; 4]);
    }

    #[test]
    fn a_body_that_looks_like_a_request_is_not_judged() {
        let body: &[u8] = b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let stream = [
            format!("PUT /f HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
            b"GET / HTTP/1.1\r\n\r\n",
        ]
        .concat();
        assert_eq!(verdicts(&[&stream]), vec![Verdict::Clean, Verdict::Clean]);
    }

    #[test]
    fn smuggling_is_flagged() {
        assert_eq!(
            verdicts(&[b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]),
            vec![Verdict::LengthAndChunked]
        );
        assert_eq!(
            verdicts(&[
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n"
            ]),
            vec![Verdict::LengthAndChunked]
        );
        assert_eq!(
            verdicts(&[b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd"]),
            vec![Verdict::DuplicateLength]
        );
        // After a clean request, the second one is the smuggler.
        assert_eq!(
            verdicts(&[b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"]),
            vec![Verdict::Clean, Verdict::DuplicateLength]
        );
    }

    #[test]
    fn oversized_or_garbage_heads_stop_the_sniffer() {
        let mut s = FramingSniffer::new(64);
        s.observe(&[b'a'; 1000]);
        assert_eq!(s.next_verdict(), None);
        s.observe(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(s.next_verdict(), None);
    }
}
