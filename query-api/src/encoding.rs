//! Content codings: choosing one from `Accept-Encoding` (q-values honoured,
//! zstd preferred over br over gzip when the client weighs them equally) and
//! compressing a document body once, to be kept beside it.

use std::io::Write;

use axum::http::{header, HeaderMap, HeaderValue};

/// Bodies smaller than this are sent as they are: the coding would save
/// less than its own framing and the client's work.
pub const MIN_COMPRESSED: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Zstd,
    Br,
    Gzip,
}

impl Coding {
    /// Index of the kept compressed form.
    pub fn slot(self) -> Option<usize> {
        match self {
            Coding::Identity => None,
            Coding::Zstd => Some(0),
            Coding::Br => Some(1),
            Coding::Gzip => Some(2),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Zstd => "zstd",
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }

    pub fn header(self) -> Option<HeaderValue> {
        match self {
            Coding::Identity => None,
            other => Some(HeaderValue::from_static(other.name())),
        }
    }

    /// Compresses at a level fit for bodies compressed once and sent many
    /// times.
    pub fn compress(self, body: &[u8]) -> bytes::Bytes {
        let out = match self {
            Coding::Identity => body.to_vec(),
            Coding::Zstd => zstd::bulk::compress(body, 9).unwrap_or_else(|_| body.to_vec()),
            Coding::Br => {
                let mut out = Vec::with_capacity(body.len() / 3);
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 9, 20);
                    // Writing to a Vec cannot fail.
                    let _ = w.write_all(body);
                }
                out
            }
            Coding::Gzip => {
                let mut w = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() / 3),
                    flate2::Compression::new(9),
                );
                let _ = w.write_all(body);
                w.finish().unwrap_or_default()
            }
        };
        bytes::Bytes::from(out)
    }
}

/// The coding to answer with, given the request's `Accept-Encoding`.
pub fn negotiate(headers: &HeaderMap) -> Coding {
    let Some(accept) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        return Coding::Identity;
    };
    let mut best = (Coding::Identity, 0.0f32);
    let mut star = None;
    let mut named = [false; 3];
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let coding = match name.as_str() {
            "zstd" => Coding::Zstd,
            "br" => Coding::Br,
            "gzip" | "x-gzip" => Coding::Gzip,
            "*" => {
                star = Some(q);
                continue;
            }
            _ => continue,
        };
        if let Some(slot) = coding.slot() {
            named[slot] = true;
        }
        if q > best.1 || (q == best.1 && q > 0.0 && rank(coding) < rank(best.0)) {
            best = (coding, q);
        }
    }
    // `*` stands for every coding not named.
    if let Some(q) = star.filter(|q| *q > 0.0) {
        for coding in [Coding::Zstd, Coding::Br, Coding::Gzip] {
            let slot = coding.slot().unwrap_or(0);
            if !named[slot] && (q > best.1 || (q == best.1 && rank(coding) < rank(best.0))) {
                best = (coding, q);
            }
        }
    }
    if best.1 > 0.0 {
        best.0
    } else {
        Coding::Identity
    }
}

fn rank(coding: Coding) -> u8 {
    match coding {
        Coding::Zstd => 0,
        Coding::Br => 1,
        Coding::Gzip => 2,
        Coding::Identity => 3,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn accept(value: &str) -> Coding {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_str(value).unwrap(),
        );
        negotiate(&headers)
    }

    #[test]
    fn honours_preferences_and_q_values() {
        assert_eq!(negotiate(&HeaderMap::new()), Coding::Identity);
        assert_eq!(accept("gzip"), Coding::Gzip);
        assert_eq!(accept("gzip, deflate, br"), Coding::Br);
        assert_eq!(accept("gzip, br, zstd"), Coding::Zstd);
        assert_eq!(accept("zstd;q=0.5, gzip;q=0.9"), Coding::Gzip);
        assert_eq!(accept("br;q=0, gzip;q=0"), Coding::Identity);
        assert_eq!(accept("identity"), Coding::Identity);
        assert_eq!(accept("*"), Coding::Zstd);
        assert_eq!(accept("zstd;q=0, *"), Coding::Br);
        assert_eq!(accept("deflate"), Coding::Identity);
    }

    #[test]
    fn every_coding_round_trips() {
        let body = br#"{"id":"x","values":{"temp":12.5}}"#.repeat(40);
        let z = Coding::Zstd.compress(&body);
        assert_eq!(zstd::bulk::decompress(&z, body.len()).unwrap(), body);
        let b = Coding::Br.compress(&body);
        let mut out = Vec::new();
        brotli::Decompressor::new(&b[..], 4096)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
        let g = Coding::Gzip.compress(&body);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&g[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
        assert!(z.len() < body.len() / 4 && b.len() < body.len() / 4);
    }
}
