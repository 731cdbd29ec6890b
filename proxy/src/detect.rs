//! Protocol detection on a connection's first bytes (linkerd2-proxy's `detect` layer): HTTP/1.x
//! by its request line, HTTP/2 by the prior-knowledge preface (RFC 9113 §3.4), TLS by its
//! record header (the app's own TLS, passed through opaque with its SNI read for metrics), and
//! anything else opaque. Pure over a byte prefix so that it is table-tested and fuzzed
//! (`fuzz/`); `io.rs` reads the prefix with a timeout and replays it to whatever comes next.

use crate::sni;

/// What a connection's prefix says it speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// An HTTP/1.0 or 1.1 request line.
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// A TLS ClientHello; its server name when the first record carries one.
    Tls { sni: Option<String> },
    /// Anything else: relayed byte for byte.
    Opaque,
}

/// The verdict on a prefix: a protocol, or the bytes so far fit more than one answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detect {
    Found(Protocol),
    NeedMore,
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest HTTP/1 request line waited for. A line still consistent with HTTP at this length is
/// taken as HTTP (hyper then parses it, or refuses it with its own error): relaying it raw
/// would let its headers, a forged identity among them, past the proxy unexamined, and apps
/// accept far longer lines (Go: 1 MiB of headers, Node: 16 KiB).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Most a detector reads before it decides: a full TLS record (16 KiB + header) for the SNI.
pub const MAX_PREFIX: usize = sni::MAX_RECORD;

/// Decides what `buf` (the first bytes a client sent, possibly all of them if `eof`) speaks.
/// Never `NeedMore` once `eof` is set or `buf` reached [`MAX_PREFIX`].
pub fn detect(buf: &[u8], eof: bool) -> Detect {
    let full = eof || buf.len() >= MAX_PREFIX;
    if buf.is_empty() {
        return if full {
            Detect::Found(Protocol::Opaque)
        } else {
            Detect::NeedMore
        };
    }
    // TLS: a handshake record of a TLS 1.0..1.3 ClientHello (its legacy record version is
    // 3.1, or 3.0..3.3 from older stacks).
    if buf[0] == 0x16 {
        if buf.len() < 3 {
            return need_more_or_opaque(full);
        }
        if buf[1] == 0x03 && buf[2] <= 0x04 {
            return match sni::server_name(buf) {
                sni::Parse::Done(sni) => Detect::Found(Protocol::Tls { sni }),
                sni::Parse::NeedMore if !full => Detect::NeedMore,
                // A record we cannot read whole: still TLS, its name unknown.
                _ => Detect::Found(Protocol::Tls { sni: None }),
            };
        }
        return Detect::Found(Protocol::Opaque);
    }
    // HTTP/2 prior knowledge.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        if n == H2_PREFACE.len() {
            return Detect::Found(Protocol::Http2);
        }
        return need_more_or_opaque(full);
    }
    // Judged on the first MAX_REQUEST_LINE bytes only, so that a verdict reached at the limit
    // stays the same however many bytes follow.
    let line = &buf[..buf.len().min(MAX_REQUEST_LINE)];
    match request_line(line) {
        Line::Http1 => Detect::Found(Protocol::Http1),
        Line::Partial if line.len() == MAX_REQUEST_LINE => Detect::Found(Protocol::Http1),
        Line::Partial if !full => Detect::NeedMore,
        _ => Detect::Found(Protocol::Opaque),
    }
}

fn need_more_or_opaque(full: bool) -> Detect {
    if full {
        Detect::Found(Protocol::Opaque)
    } else {
        Detect::NeedMore
    }
}

enum Line {
    Http1,
    /// Consistent with a request line so far.
    Partial,
    Not,
}

/// RFC 9112 §3: `method SP request-target SP HTTP-version CRLF`, method a token; judged as the
/// most lenient servers behind a proxy parse it, not as the RFC writes it. A line an app
/// accepts but detection called opaque would reach it raw, its headers unexamined (a forged
/// `meshwork-client-id` among them); one that detection calls HTTP but hyper refuses gets a
/// 400 instead. The most lenient parser found is Python's `http.server` (wsgiref's and
/// Django's runserver's too): the line up to LF, split on any byte `str.split` takes for
/// whitespace in latin-1 (a stray CR, VT, FF, 0x1C–0x1F, 0x85, 0xA0 as well as SP and HTAB),
/// control characters and DEL kept in the words, three or more words whose last starts with
/// `HTTP/`, or HTTP/0.9's `GET <path>` (whose headers Python still reads). A line whose
/// method is one apps serve (`METHODS`) is read so. Any other method is read as nginx and
/// hyper read a line — runs of SP or HTAB, no control character, CR only before LF — and
/// decided at the first byte that breaks it: client-first protocols that begin with a word
/// and a space (git's `0033git-upload-pack /p.git\0host=h\0`, with no LF to wait for) are
/// relayed at once, not held for the detection timeout. (Python dispatches a method only to
/// a handler of its name, so a forged header under an exotic method reaches none.) Empty
/// lines and whitespace before the line are skipped. Undecided until the line ends, unless a
/// byte no request line holds comes first.
fn request_line(buf: &[u8]) -> Line {
    let mut i = 0;
    while i < buf.len() && (buf[i] == b'\n' || is_lenient_space(buf[i])) {
        i += 1;
    }
    if i == buf.len() {
        return if i > 0 { Line::Partial } else { Line::Not };
    }
    let method = i;
    // method = token
    while i < buf.len() && is_tchar(buf[i]) {
        i += 1;
    }
    if i == buf.len() {
        return Line::Partial;
    }
    let lenient = METHODS.contains(&&buf[method..i]);
    let is_sep = |b: u8| {
        if lenient {
            is_lenient_space(b)
        } else {
            b == b' ' || b == b'\t'
        }
    };
    if i == method || !is_sep(buf[i]) {
        return Line::Not;
    }
    let end = loop {
        match buf.get(i) {
            None => return Line::Partial,
            Some(b'\n') => break i,
            Some(_) if lenient => i += 1,
            Some(b'\r') => match buf.get(i + 1) {
                None => return Line::Partial,
                Some(b'\n') => break i,
                Some(_) => return Line::Not,
            },
            Some(&b) if b < b' ' && b != b'\t' || b == 0x7f => return Line::Not,
            Some(_) => i += 1,
        }
    };
    let mut words = buf[method..end]
        .split(|b| is_sep(*b))
        .filter(|w| !w.is_empty());
    let (Some(verb), Some(target)) = (words.next(), words.next()) else {
        return Line::Not;
    };
    match words.next_back() {
        Some(version) if version.starts_with(b"HTTP/") => Line::Http1,
        Some(_) => Line::Not,
        None if verb == b"GET"
            && (target.starts_with(b"/") || target.windows(3).any(|w| w == b"://")) =>
        {
            Line::Http1
        }
        None => Line::Not,
    }
}

/// The methods apps serve (RFC 9110 §9, PATCH, and WebDAV's), whose lines are read as
/// leniently as the most lenient server reads them.
const METHODS: &[&[u8]] = &[
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"CONNECT",
    b"OPTIONS",
    b"TRACE",
    b"PATCH",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"SEARCH",
    b"REPORT",
];

/// What Python's `str.split()` splits on in a latin-1 line (`http.server` decodes it so).
fn is_lenient_space(b: u8) -> bool {
    matches!(b, 0x09..=0x0d | 0x1c..=0x20 | 0x85 | 0xa0)
}

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(p: Protocol) -> Detect {
        Detect::Found(p)
    }

    #[test]
    fn http1_request_lines() {
        for (input, eof, want) in [
            (
                &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
                false,
                found(Protocol::Http1),
            ),
            (b"POST /x?y=1 HTTP/1.0\r\n", false, found(Protocol::Http1)),
            (b"CONNECT a:443 HTTP/1.1\r\n", false, found(Protocol::Http1)),
            (
                b"GET http://web.default:80/ HTTP/1.1\r\n",
                false,
                found(Protocol::Http1),
            ),
            // Not yet decidable.
            (b"GE", false, Detect::NeedMore),
            (b"GET /long/pa", false, Detect::NeedMore),
            (b"GET / HTTP/1.", false, Detect::NeedMore),
            // The client stopped: whatever it is, it is not HTTP.
            (b"GET / HTTP/1.", true, found(Protocol::Opaque)),
            // Not HTTP/1.
            (b"G(T / HTTP/1.1\r\n", false, found(Protocol::Opaque)),
            (b"GET / HTTP/1.1\rX\n", false, found(Protocol::Opaque)),
            (b"POST /\r\n", false, found(Protocol::Opaque)),
            (b"GET key\r\n", false, found(Protocol::Opaque)),
            // Client-first protocols that begin with a word and a space: decided at the
            // first byte no request line of theirs holds, not held for an LF.
            (
                b"0033git-upload-pack /x.git\0host=repo\0",
                false,
                found(Protocol::Opaque),
            ),
            (b"FOO /\x01 HTTP/1.1\r\n", false, found(Protocol::Opaque)),
            (b"FOO / HTTP/1.1\rX", false, found(Protocol::Opaque)),
            (
                b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\n",
                false,
                found(Protocol::Opaque),
            ),
            (b"GET / FTP/1.1\r\n", false, found(Protocol::Opaque)),
            (b"SET key value\r\n", false, found(Protocol::Opaque)),
            // As servers parse it: a bare LF, empty lines first, another minor version.
            (b"GET / HTTP/1.1\n", false, found(Protocol::Http1)),
            (b"\r\nGET / HTTP/1.1\r\n", false, found(Protocol::Http1)),
            (b"GET / HTTP/1.2\r\n", false, found(Protocol::Http1)),
            (b"\r\n", false, Detect::NeedMore),
            (b"GET / HTTP/1.1\r", false, Detect::NeedMore),
            // What lenient servers take (Python's http.server: each of these reaches its
            // handler with its headers) is HTTP here too, so that hyper refuses it with a 400
            // rather than the app reading it raw.
            (b"GET  / HTTP/1.1\r\n", false, found(Protocol::Http1)),
            (b"GET / HTTP/1.1 \r\n", false, found(Protocol::Http1)),
            (b" GET / HTTP/1.1\r\n", false, found(Protocol::Http1)),
            (b"GET\t/\tHTTP/1.1\r\n", false, found(Protocol::Http1)),
            (b"GET / HTTP/1.x\r\n", false, found(Protocol::Http1)),
            (b"GET / HTTP/2.0\r\n", false, found(Protocol::Http1)),
            // Python's http.server takes these too (each reaches its handler with its
            // headers): any latin-1 whitespace between words, control characters and DEL in
            // them, a stray CR, HTTP/0.9's two-word GET.
            (b"GET /\x01 HTTP/1.1\r\n", false, found(Protocol::Http1)),
            (b"GET /\x7f HTTP/1.1\r\n", false, found(Protocol::Http1)),
            (b"GET / HTTP/1.1\x0b\r\n", false, found(Protocol::Http1)),
            (b"GET / HTTP/1.1\r\r\n", false, found(Protocol::Http1)),
            (b"GET\x0c/\x1cHTTP/1.1\r\n", false, found(Protocol::Http1)),
            (b"GET\xa0/\x85HTTP/1.1\r\n", false, found(Protocol::Http1)),
            (b"GET /admin\r\n", false, found(Protocol::Http1)),
            (b"GET http://web/admin\n", false, found(Protocol::Http1)),
            (b"GET  / HTTP/1.1", false, Detect::NeedMore),
            (b"GET / HTTP/1.1 ", false, Detect::NeedMore),
            // Server-speaks-first protocols and binary data.
            (
                b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
                false,
                found(Protocol::Opaque),
            ),
            (b"SSH-2.0-OpenSSH_9.2\r\n", false, found(Protocol::Opaque)),
            (b"", true, found(Protocol::Opaque)),
            (b"", false, Detect::NeedMore),
        ] {
            assert_eq!(
                detect(input, eof),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn an_endless_request_line_is_not_waited_for_and_stays_http() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE, b'a');
        assert_eq!(detect(&line, false), found(Protocol::Http1));
        line.extend_from_slice(b"\x00 not a request line any more");
        assert_eq!(detect(&line, false), found(Protocol::Http1));
        assert_eq!(
            detect(&line[..MAX_REQUEST_LINE - 1], false),
            Detect::NeedMore
        );
    }

    #[test]
    fn http2_preface() {
        assert_eq!(detect(H2_PREFACE, false), found(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(detect(&more, false), found(Protocol::Http2));
        assert_eq!(detect(&H2_PREFACE[..10], false), Detect::NeedMore);
        assert_eq!(detect(&H2_PREFACE[..10], true), found(Protocol::Opaque));
        // "PRI" is also a token: a request line "PRI * HTTP/1.1" is HTTP/1.
        assert_eq!(detect(b"PRI * HTTP/1.1\r\n", false), found(Protocol::Http1));
    }

    #[test]
    fn tls_with_and_without_sni() {
        let hello = sni::tests::client_hello(Some("web.default.svc.cluster.local"));
        assert_eq!(
            detect(&hello, false),
            found(Protocol::Tls {
                sni: Some("web.default.svc.cluster.local".into())
            })
        );
        assert_eq!(detect(&hello[..40], false), Detect::NeedMore);
        assert_eq!(
            detect(&hello[..40], true),
            found(Protocol::Tls { sni: None })
        );
        let anon = sni::tests::client_hello(None);
        assert_eq!(detect(&anon, false), found(Protocol::Tls { sni: None }));
        // A handshake type byte without a TLS version after it is not TLS.
        assert_eq!(detect(b"\x16\x09\x00", false), found(Protocol::Opaque));
    }
}
