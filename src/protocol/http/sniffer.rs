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
    /// A transfer coding other than one `chunked` (twice, or an unknown coding): parsers
    /// disagree about such bodies, and no client needs them.
    TransferEncoding,
    /// A line of the head ends in a bare LF: allowed to recipients (RFC 9112 section 2.2),
    /// but a proxy whose backend reads lines differently is where smuggling lives.
    BareLineFeed,
    /// The sniffer lost track of the framing before this request (a chunk line it would not
    /// follow, a malformed chunk size): it cannot vouch for where the request begins, so the
    /// request is refused rather than passed unjudged.
    Unfollowable,
}

impl Verdict {
    pub fn is_clean(self) -> bool {
        self == Verdict::Clean
    }
}

#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    /// A request was refused: the connection closes after it, nothing more is judged.
    Off,
    /// Framing could not be followed (a head too large or malformed, a chunk line not
    /// followed): every later request is [`Verdict::Unfollowable`].
    Lost,
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

    /// The verdict on the next request, in order. Once framing could not be followed, every
    /// later request is [`Verdict::Unfollowable`].
    pub fn next_verdict(&mut self) -> Option<Verdict> {
        match self.verdicts.pop_front() {
            Some(verdict) => Some(verdict),
            None if matches!(self.state, State::Lost) => Some(Verdict::Unfollowable),
            None => None,
        }
    }

    /// Bytes held of a head or line not yet complete.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes as read from the client.
    pub fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            bytes = match self.state {
                State::Off | State::Lost => return,
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
                let (mut verdict, framing) = judge(request.headers);
                if verdict.is_clean() && has_bare_line_feed(&self.buffer[..len]) {
                    verdict = Verdict::BareLineFeed;
                }
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
                self.state = State::Lost;
                &[]
            }
        }
    }

    fn line<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
            self.buffer.extend_from_slice(bytes);
            if self.buffer.len() > MAX_LINE {
                self.state = State::Lost;
            }
            return &[];
        };
        self.buffer.extend_from_slice(&bytes[..end]);
        let line = std::mem::take(&mut self.buffer);
        let Some(line) = line.strip_suffix(b"\r") else {
            // A bare LF in the chunked framing: not followed (hyper may read it otherwise).
            self.state = State::Lost;
            return &[];
        };
        self.state = match self.state {
            State::ChunkSize => {
                let size = line.split(|&b| b == b';').next().unwrap_or(b"");
                match std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Lost,
                }
            }
            State::ChunkDataEnd => State::ChunkSize,
            State::Trailers if line.is_empty() => State::Head,
            State::Trailers => State::Trailers,
            _ => State::Lost,
        };
        &bytes[end + 1..]
    }
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Whether a line of `head` ends in LF without CR.
fn has_bare_line_feed(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

fn judge(headers: &[httparse::Header<'_>]) -> (Verdict, Framing) {
    let mut lengths = Vec::new();
    // Every transfer coding named, across all Transfer-Encoding lines.
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut transfer_encoding = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            codings.extend(
                h.value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|c| !c.is_empty()),
            );
        }
    }
    if transfer_encoding && !lengths.is_empty() {
        return (Verdict::LengthAndChunked, Framing::None);
    }
    let chunked = match codings.as_slice() {
        [] => false,
        [only] if only.eq_ignore_ascii_case(b"chunked") => true,
        _ => return (Verdict::TransferEncoding, Framing::None),
    };
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
        let mut out = Vec::new();
        while let Some(verdict) = s.next_verdict() {
            out.push(verdict);
            if verdict == Verdict::Unfollowable {
                break;
            }
        }
        out
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
    fn oversized_or_garbage_heads_stop_the_sniffer_and_it_vouches_for_nothing_after() {
        let mut s = FramingSniffer::new(64);
        s.observe(&[b'a'; 1000]);
        assert_eq!(s.next_verdict(), Some(Verdict::Unfollowable));
        s.observe(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(s.next_verdict(), Some(Verdict::Unfollowable));
    }

    #[test]
    fn a_long_chunk_extension_split_across_reads_does_not_switch_the_check_off() {
        // The probe: a chunk line past the sniffer's line limit, in pieces, then a smuggler.
        let extension = vec![b'x'; 5000];
        let head: &[u8] = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;";
        let smuggler: &[u8] =
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut s = FramingSniffer::new(8192);
        s.observe(head);
        for piece in extension.chunks(1000) {
            s.observe(piece);
        }
        s.observe(b"\r\nx\r\n0\r\n\r\n");
        s.observe(smuggler);
        assert_eq!(s.next_verdict(), Some(Verdict::Clean));
        assert_ne!(s.next_verdict(), Some(Verdict::Clean));
    }

    #[test]
    fn transfer_codings_other_than_one_chunked_and_bare_line_feeds_are_flagged() {
        for head in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                [..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
        ] {
            assert_eq!(
                verdicts(&[head]),
                vec![Verdict::TransferEncoding],
                "{head:?}"
            );
        }
        assert_eq!(
            verdicts(&[b"GET / HTTP/1.1\nHost: a\n\n"]),
            vec![Verdict::BareLineFeed]
        );
        assert_eq!(
            verdicts(&[b"GET / HTTP/1.1\r\nHost: a\n\r\n"]),
            vec![Verdict::BareLineFeed]
        );
        // A bare LF in the chunked framing: the next request is not vouched for.
        assert_eq!(
            verdicts(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n"]),
            vec![Verdict::Clean, Verdict::Unfollowable]
        );
    }
}
