//! Trace context on the wire: W3C `traceparent` (with `tracestate` passed
//! through untouched) and Zipkin's B3, single (`b3`) and multi header
//! (`x-b3-*`). A request's context is read once; when the proxy records a
//! span it rewrites the context the next hop sees so that the next hop's
//! spans nest under the proxy's, in the format(s) the request came with.

use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: &str = "traceparent";
pub const B3: &str = "b3";
pub const B3_TRACE_ID: &str = "x-b3-traceid";
pub const B3_SPAN_ID: &str = "x-b3-spanid";
pub const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const B3_SAMPLED: &str = "x-b3-sampled";
pub const B3_FLAGS: &str = "x-b3-flags";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn random() -> Self {
        loop {
            let id = fastrand::u128(..).to_be_bytes();
            if id != [0; 16] {
                return TraceId(id);
            }
        }
    }
}

impl SpanId {
    pub fn random() -> Self {
        loop {
            let id = fastrand::u64(..).to_be_bytes();
            if id != [0; 8] {
                return SpanId(id);
            }
        }
    }
}

/// Which headers carried the context (and so get rewritten).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Formats {
    pub w3c: bool,
    pub b3_single: bool,
    pub b3_multi: bool,
}

/// The context a request arrived with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: TraceId,
    /// The caller's span: the parent of the proxy's.
    pub span_id: SpanId,
    /// The caller's sampling decision (`None`: B3 left it to us).
    pub sampled: Option<bool>,
    pub formats: Formats,
}

/// Reads the request's trace context: W3C first, else B3 single, else B3
/// multi. Malformed headers count as absent (a fresh trace starts).
pub fn extract(headers: &HeaderMap) -> Option<Incoming> {
    let mut found = None;
    if let Some((trace_id, span_id, sampled)) = header(headers, TRACEPARENT).and_then(traceparent) {
        found = Some(Incoming {
            trace_id,
            span_id,
            sampled: Some(sampled),
            formats: Formats::default(),
        });
    } else if let Some((trace_id, span_id, sampled)) = header(headers, B3).and_then(b3_single) {
        found = Some(Incoming {
            trace_id,
            span_id,
            sampled,
            formats: Formats::default(),
        });
    } else if let (Some(t), Some(s)) = (header(headers, B3_TRACE_ID), header(headers, B3_SPAN_ID))
        && let (Some(trace_id), Some(span_id)) = (trace_id_hex(t), span_id_hex(s))
    {
        let sampled = if header(headers, B3_FLAGS) == Some("1") {
            Some(true)
        } else {
            header(headers, B3_SAMPLED).and_then(b3_sampled)
        };
        found = Some(Incoming {
            trace_id,
            span_id,
            sampled,
            formats: Formats::default(),
        });
    }
    let mut found = found?;
    // Every format present is rewritten, whichever was read.
    found.formats = Formats {
        w3c: headers.contains_key(TRACEPARENT),
        b3_single: headers.contains_key(B3),
        b3_multi: headers.contains_key(B3_TRACE_ID),
    };
    Some(found)
}

/// Sets the context the next hop sees: trace `trace_id`, parent `span_id`
/// (the proxy's span), sampled or not, in `formats` (W3C when none).
/// `caller` is the proxy span's own parent, for B3's parent field.
pub fn inject(
    headers: &mut HeaderMap,
    trace_id: TraceId,
    span_id: SpanId,
    caller: Option<SpanId>,
    sampled: bool,
    formats: Formats,
) {
    let w3c = formats.w3c || !(formats.b3_single || formats.b3_multi);
    let (trace, span) = (hex(&trace_id.0), hex(&span_id.0));
    let flag = if sampled { "1" } else { "0" };
    if w3c {
        let v = format!("00-{trace}-{span}-0{flag}");
        headers.insert(TRACEPARENT, HeaderValue::from_str(&v).expect("hex"));
    }
    if formats.b3_single {
        let v = match caller {
            Some(p) => format!("{trace}-{span}-{flag}-{}", hex(&p.0)),
            None => format!("{trace}-{span}-{flag}"),
        };
        headers.insert(B3, HeaderValue::from_str(&v).expect("hex"));
    }
    if formats.b3_multi {
        let set = |h: &mut HeaderMap, name: &'static str, v: &str| {
            h.insert(name, HeaderValue::from_str(v).expect("hex"));
        };
        set(headers, B3_TRACE_ID, &trace);
        set(headers, B3_SPAN_ID, &span);
        set(headers, B3_SAMPLED, flag);
        match caller {
            Some(p) => set(headers, B3_PARENT_SPAN_ID, &hex(&p.0)),
            None => {
                headers.remove(B3_PARENT_SPAN_ID);
            }
        }
        // Debug implies sampled; the explicit decision replaces it.
        headers.remove(B3_FLAGS);
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// `00-<trace>-<parent>-<flags>` (future versions: the same first fields).
fn traceparent(v: &str) -> Option<(TraceId, SpanId, bool)> {
    let mut parts = v.split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    u8::from_str_radix(version, 16).ok()?;
    if trace.len() != 32 || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id_hex(trace)?, span_id_hex(span)?, flags & 1 == 1))
}

/// `{trace}-{span}[-{sampling}[-{parent}]]`; a bare `0`/`1`/`d` carries
/// only a decision, which alone is no context.
fn b3_single(v: &str) -> Option<(TraceId, SpanId, Option<bool>)> {
    let mut parts = v.split('-');
    let (trace, span) = (parts.next()?, parts.next()?);
    let sampled = match parts.next() {
        None => None,
        Some(s) => Some(b3_sampled(s)?),
    };
    Some((trace_id_hex(trace)?, span_id_hex(span)?, sampled))
}

fn b3_sampled(v: &str) -> Option<bool> {
    match v {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// 32 hex digits, or B3's 16 (the high half zero); never all zero.
fn trace_id_hex(s: &str) -> Option<TraceId> {
    let mut id = [0u8; 16];
    match s.len() {
        32 => unhex(s, &mut id)?,
        16 => unhex(s, &mut id[8..])?,
        _ => return None,
    }
    (id != [0; 16]).then_some(TraceId(id))
}

fn span_id_hex(s: &str) -> Option<SpanId> {
    let mut id = [0u8; 8];
    if s.len() != 16 {
        return None;
    }
    unhex(s, &mut id)?;
    (id != [0; 8]).then_some(SpanId(id))
}

fn unhex(s: &str, out: &mut [u8]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        *o = (d(b[2 * i])? * 16 + d(b[2 * i + 1])?) as u8;
    }
    Some(())
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn reads_w3c_traceparent() {
        let tp = format!("00-{TRACE}-{SPAN}-01");
        let c = extract(&headers(&[(TRACEPARENT, &tp)])).unwrap();
        assert_eq!(hex(&c.trace_id.0), TRACE);
        assert_eq!(hex(&c.span_id.0), SPAN);
        assert_eq!(c.sampled, Some(true));
        assert!(c.formats.w3c && !c.formats.b3_multi);
        let tp = format!("00-{TRACE}-{SPAN}-00");
        assert_eq!(
            extract(&headers(&[(TRACEPARENT, &tp)])).unwrap().sampled,
            Some(false)
        );
    }

    #[test]
    fn malformed_or_zero_contexts_are_absent() {
        for bad in [
            "00-xyz-00f067aa0ba902b7-01".to_string(),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("00-{TRACE}-{SPAN}"),
        ] {
            assert_eq!(extract(&headers(&[(TRACEPARENT, &bad)])), None, "{bad}");
        }
        // A later version may add fields after the known ones.
        let v1 = format!("01-{TRACE}-{SPAN}-01-more");
        assert!(extract(&headers(&[(TRACEPARENT, &v1)])).is_some());
    }

    #[test]
    fn reads_b3_single_and_multi() {
        let c = extract(&headers(&[(B3, &format!("{TRACE}-{SPAN}-1"))])).unwrap();
        assert_eq!((c.sampled, c.formats.b3_single), (Some(true), true));
        // A 64-bit trace id is the low half.
        let c = extract(&headers(&[(B3, &format!("a3ce929d0e0e4736-{SPAN}"))])).unwrap();
        assert_eq!(hex(&c.trace_id.0), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(c.sampled, None);
        assert_eq!(extract(&headers(&[(B3, "0")])), None, "a bare decision");

        let c = extract(&headers(&[
            (B3_TRACE_ID, TRACE),
            (B3_SPAN_ID, SPAN),
            (B3_SAMPLED, "0"),
        ]))
        .unwrap();
        assert_eq!((c.sampled, c.formats.b3_multi), (Some(false), true));
        let c = extract(&headers(&[
            (B3_TRACE_ID, TRACE),
            (B3_SPAN_ID, SPAN),
            (B3_FLAGS, "1"),
        ]))
        .unwrap();
        assert_eq!(c.sampled, Some(true), "debug means sampled");
    }

    #[test]
    fn injection_rewrites_the_parent_in_every_format_present() {
        let mut h = headers(&[
            (TRACEPARENT, &format!("00-{TRACE}-{SPAN}-01")),
            (B3_TRACE_ID, TRACE),
            (B3_SPAN_ID, SPAN),
            (B3_FLAGS, "1"),
            ("tracestate", "vendor=x"),
        ]);
        let incoming = extract(&h).unwrap();
        let ours = SpanId([1, 2, 3, 4, 5, 6, 7, 8]);
        inject(
            &mut h,
            incoming.trace_id,
            ours,
            Some(incoming.span_id),
            true,
            incoming.formats,
        );
        assert_eq!(
            h[TRACEPARENT],
            format!("00-{TRACE}-0102030405060708-01").as_str()
        );
        assert_eq!(h[B3_SPAN_ID], "0102030405060708");
        assert_eq!(h[B3_PARENT_SPAN_ID], SPAN);
        assert_eq!(h[B3_SAMPLED], "1");
        assert!(!h.contains_key(B3_FLAGS));
        assert!(!h.contains_key(B3));
        assert_eq!(h["tracestate"], "vendor=x", "tracestate passes through");
        // What the next hop reads is the proxy's span.
        assert_eq!(extract(&h).unwrap().span_id, ours);
    }

    #[test]
    fn a_new_trace_is_w3c() {
        let mut h = HeaderMap::new();
        let (t, s) = (TraceId::random(), SpanId::random());
        inject(&mut h, t, s, None, false, Formats::default());
        let c = extract(&h).unwrap();
        assert_eq!((c.trace_id, c.span_id, c.sampled), (t, s, Some(false)));
        let mut h = headers(&[(B3, &format!("{TRACE}-{SPAN}"))]);
        let c = extract(&h).unwrap();
        inject(&mut h, c.trace_id, s, Some(c.span_id), true, c.formats);
        assert_eq!(h[B3], format!("{TRACE}-{}-1-{SPAN}", hex(&s.0)).as_str());
        assert!(!h.contains_key(TRACEPARENT), "B3 stays B3");
    }
}
