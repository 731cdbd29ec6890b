//! The SPDY/3.1 framing kubectl's port-forward speaks (moby/spdystream, the client side of
//! k8s.io/apimachinery's httpstream), either raw after `Upgrade: SPDY/3.1` or tunnelled over a
//! WebSocket (`SPDY/3.1+portforward.k8s.io`, kubectl 1.31+). Only what a server of
//! port-forward streams needs: frames in and out, header blocks (zlib with SPDY's dictionary,
//! one compression context per direction for the whole connection). No flow control: spdystream
//! neither sends nor waits for WINDOW_UPDATE.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 0x01;

/// One frame as read.
#[derive(Debug)]
pub enum Frame {
    Control {
        kind: u16,
        body: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

/// Reads one frame; None at a clean end of the connection.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Frame>> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let first = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(if first & 0x8000_0000 != 0 {
        Frame::Control {
            kind: (first & 0xffff) as u16,
            body,
        }
    } else {
        Frame::Data {
            stream: first & 0x7fff_ffff,
            flags,
            data: body,
        }
    }))
}

pub fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000u16 | 3).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

pub fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn zerr(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("SPDY header block: {e}"),
    )
}

/// The receiving side's header decompressor (one per connection).
pub struct HeaderReader(Decompress);

impl Default for HeaderReader {
    fn default() -> Self {
        HeaderReader(Decompress::new(true))
    }
}

impl HeaderReader {
    /// Decodes one header block into lower-case names and values.
    pub fn read(&mut self, block: &[u8]) -> std::io::Result<Vec<(String, String)>> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            let before = self.0.total_in();
            let r = self
                .0
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.0.total_in() - before) as usize..];
            match r {
                Ok(Status::StreamEnd) => break,
                Ok(_) if input.is_empty() && out.capacity() > out.len() => break,
                Ok(_) => continue,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0.set_dictionary(DICTIONARY).map_err(zerr)?;
                }
                Err(e) => return Err(zerr(e)),
            }
        }
        parse_block(&out)
    }
}

fn parse_block(b: &[u8]) -> std::io::Result<Vec<(String, String)>> {
    let mut r = Cursor(b);
    let n = r.u32()?;
    let mut out = Vec::new();
    for _ in 0..n.min(1024) {
        let k = r.bytes()?;
        let v = r.bytes()?;
        out.push((
            String::from_utf8_lossy(k).to_ascii_lowercase(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Ok(out)
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(zerr("short header block"));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u32(&mut self) -> std::io::Result<usize> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
    }
    fn bytes(&mut self) -> std::io::Result<&'a [u8]> {
        let n = self.u32()?;
        self.take(n)
    }
}

/// The sending side's header compressor (one per connection).
pub struct HeaderWriter(Compress);

impl Default for HeaderWriter {
    fn default() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        let _ = c.set_dictionary(DICTIONARY);
        HeaderWriter(c)
    }
}

impl HeaderWriter {
    pub fn write(&mut self, headers: &[(&str, &str)]) -> std::io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.to_ascii_lowercase().as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(1024);
            }
            let before = self.0.total_in();
            self.0
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(zerr)?;
            input = &input[(self.0.total_in() - before) as usize..];
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
        Ok(out)
    }
}

/// SPDY/3 header compression dictionary (spdystream's `headerDictionary`).
pub const DICTIONARY: &[u8] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\x00\
    \x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\x00\x00\x00\x0eaccept-char\
    set\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-\
    ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\
    \x0dcache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\x00\x00\x00\x10c\
    ontent-encoding\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\x00\x00\
    \x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\x00\x00\
    \x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\x00\
    \x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\x00\
    \x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\x00\
    \x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\x00\
    \x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\x00\x00\
    \x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0br\
    etry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\x00\x00\x00\
    \x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\x00\x00\x00\x04va\
    ry\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\x00\x00\x00\
    \x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200\x20OK\x00\x00\x00\
    \x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\x00\x00\x00\
    \x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin10010120120220520630030230\
    3304305306307402405406407408409410411412413414415416417502504505203\x20Non-Authoritative\
    \x20Information204\x20No\x20Content301\x20Moved\x20Permanently400\x20Bad\x20Request401\
    \x20Unauthorized403\x20Forbidden404\x20Not\x20Found500\x20Internal\x20Server\x20Error501\
    \x20Not\x20Implemented503\x20Service\x20UnavailableJan\x20Feb\x20Mar\x20Apr\x20May\x20Ju\
    n\x20Jul\x20Aug\x20Sept\x20Oct\x20Nov\x20Dec\x2000:00:00\x20Mon,\x20Tue,\x20Wed,\x20Thu,\
    \x20Fri,\x20Sat,\x20Sun,\x20GMTchunked,text/html,image/png,image/jpg,image/gif,applicati\
    on/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflat\
    e,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let mut wire = control(TYPE_PING, 0, &7u32.to_be_bytes());
        wire.extend(data(5, FLAG_FIN, b"hello"));
        let mut r = &wire[..];
        match read_frame(&mut r).await.ok().flatten() {
            Some(Frame::Control { kind, body }) => {
                assert_eq!(kind, TYPE_PING);
                assert_eq!(body, 7u32.to_be_bytes());
            }
            f => panic!("{f:?}"),
        }
        match read_frame(&mut r).await.ok().flatten() {
            Some(Frame::Data {
                stream,
                flags,
                data,
            }) => assert_eq!((stream, flags, &data[..]), (5, FLAG_FIN, &b"hello"[..])),
            f => panic!("{f:?}"),
        }
        assert!(read_frame(&mut r).await.ok().flatten().is_none());
    }

    /// Header blocks share one zlib context per direction, primed with the dictionary.
    #[test]
    fn header_blocks_share_a_context() {
        let (mut w, mut r) = (HeaderWriter::default(), HeaderReader::default());
        for i in 0..3 {
            let id = i.to_string();
            let block = w
                .write(&[("streamType", "data"), ("port", "8080"), ("requestID", &id)])
                .unwrap_or_default();
            let h = r.read(&block).unwrap_or_default();
            assert_eq!(
                h,
                vec![
                    ("streamtype".to_string(), "data".to_string()),
                    ("port".into(), "8080".into()),
                    ("requestid".into(), id),
                ]
            );
        }
        assert!(r.read(b"not zlib").is_err());
        assert!(parse_block(&[0, 0, 0, 1, 0, 0, 0, 9]).is_err());
    }
}
