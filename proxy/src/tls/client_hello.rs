//! Reading the ALPN protocols and SNI of a TLS ClientHello, to tell mesh
//! TLS (ALPN `weft.*`) from an application's own TLS, which passes through
//! untouched. The record is parsed with bounds checks throughout; anything
//! malformed is simply "not mesh TLS".

/// What the ClientHello offers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hello {
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
}

/// The length of the first TLS record (header included), once its header
/// has arrived.
pub fn record_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 5).then(|| 5 + u16::from_be_bytes([buf[3], buf[4]]) as usize)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// Parses the ClientHello in the first record of `buf`.
pub fn parse(buf: &[u8]) -> Option<Hello> {
    let mut r = Reader(buf);
    if r.u8()? != 0x16 {
        return None;
    }
    r.take(2)?; // record version
    let record = r.vec16()?;
    let mut r = Reader(record);
    if r.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    let len = r.u24()?;
    let body = r.take(r.0.len().min(len))?;
    let mut r = Reader(body);
    r.take(2)?; // client version
    r.take(32)?; // random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression
    let mut hello = Hello::default();
    let Some(mut exts) = r.vec16().map(Reader) else {
        return Some(hello);
    };
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let mut data = Reader(exts.vec16()?);
        match kind {
            0x0000 => {
                // server_name: list of (type, name)
                let mut names = Reader(data.vec16()?);
                while !names.0.is_empty() {
                    let t = names.u8()?;
                    let name = names.vec16()?;
                    if t == 0 {
                        hello.sni = std::str::from_utf8(name).ok().map(String::from);
                    }
                }
            }
            0x0010 => {
                let mut protos = Reader(data.vec16()?);
                while !protos.0.is_empty() {
                    hello.alpn.push(protos.vec8()?.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls, with the given ALPN and SNI.
    fn client_hello(alpn: &[&[u8]], sni: &str) -> Vec<u8> {
        use std::sync::Arc;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), sni.to_string().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_alpn_and_sni_of_a_real_client_hello() {
        let bytes = client_hello(
            &[b"weft.h2", b"h2"],
            "web.shop.serviceaccount.identity.cluster.local",
        );
        assert_eq!(record_len(&bytes), Some(bytes.len()));
        let hello = parse(&bytes).unwrap();
        assert_eq!(hello.alpn, vec![b"weft.h2".to_vec(), b"h2".to_vec()]);
        assert_eq!(
            hello.sni.as_deref(),
            Some("web.shop.serviceaccount.identity.cluster.local")
        );
    }

    #[test]
    fn truncated_or_garbage_is_none_never_a_panic() {
        let bytes = client_hello(&[b"weft.tcp"], "x.y.serviceaccount.identity.cluster.local");
        for cut in 0..bytes.len() {
            let _ = parse(&bytes[..cut]);
        }
        assert!(parse(&[0x16, 3, 1, 0, 2, 1, 0]).is_none());
        assert!(parse(b"GET / HTTP/1.1\r\n").is_none());
    }
}
