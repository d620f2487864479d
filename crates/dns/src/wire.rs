//! DNS messages on the wire: a request's bytes → the response's bytes.
//! Decides FORMERR / NOTIMP / BADVERS, carries EDNS, and fits UDP answers
//! into what the client can take, setting TC when they do not fit.

use crate::answer::{Answer, Answerer};
use crate::server::Transport;
use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode, emit_message_parts,
};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};

/// A UDP answer without EDNS must fit this (RFC 1035 §4.2.1).
const PLAIN_UDP: u16 = 512;
/// The most we send over UDP whatever a client advertises: larger datagrams
/// fragment, and fragments get lost (BIND's default cap too).
const MAX_UDP: u16 = 4096;
/// The UDP size we advertise in our OPT record (DNS flag day 2020).
const OUR_UDP_PAYLOAD: u16 = 1232;
/// An OPT record without options: root name, type, class, ttl, rdlength.
const OPT_LEN: u16 = 11;

pub(crate) fn respond(
    answerer: &Answerer,
    request: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    // Without a whole header there is no id to answer to.
    let header = Header::read(&mut BinDecoder::new(request)).ok()?;
    // Never answer an answer: two servers could bounce errors forever.
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let message = match Message::from_vec(request) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "dns: malformed query");
            return Some(error(&header.metadata, ResponseCode::FormErr));
        }
    };
    let limit = match transport {
        Transport::Udp => message
            .edns
            .as_ref()
            .map_or(PLAIN_UDP, |e| e.max_payload().clamp(PLAIN_UDP, MAX_UDP)),
        Transport::Tcp => u16::MAX,
    };
    // RFC 6891 §7: answer EDNS with EDNS, never to a client that did not use it.
    let edns = message.edns.as_ref().map(|_| {
        let mut ours = Edns::new();
        ours.set_max_payload(OUR_UDP_PAYLOAD);
        ours
    });
    let mut meta = Metadata::response_from_request(&message.metadata);
    let answer = if message.metadata.op_code != OpCode::Query {
        Answer::code(ResponseCode::NotImp, false)
    } else if message.edns.as_ref().is_some_and(|e| e.version() > 0) {
        // Only EDNS version 0 exists; BADVERS needs our OPT to carry it.
        Answer::code(ResponseCode::BADVERS, false)
    } else if let [query] = &message.queries[..] {
        answerer.lookup(query)
    } else {
        // Every server in practice refuses zero or several questions.
        Answer::code(ResponseCode::FormErr, false)
    };
    meta.response_code = answer.rcode;
    meta.authoritative = answer.authoritative;
    Some(encode(
        &meta,
        &message.queries,
        &answer,
        edns.as_ref(),
        limit,
    ))
}

/// The whole answer when it fits `limit`; otherwise TC and the answers
/// that fit, without authority or additional records (the client retries
/// over TCP for the whole answer).
fn encode(
    meta: &Metadata,
    queries: &[Query],
    answer: &Answer,
    edns: Option<&Edns>,
    limit: u16,
) -> Vec<u8> {
    let a = answer;
    match emit(
        meta,
        queries,
        &a.answers,
        &a.authority,
        &a.additionals,
        edns,
        limit,
    ) {
        Ok((bytes, header)) if !header.truncation => return bytes,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "dns: cannot encode an answer");
            return error(meta, ResponseCode::ServFail);
        }
    }
    // How many answers fit with room left for the OPT record; then the
    // message again with just those, so the OPT record is never the one cut.
    let room = limit.saturating_sub(if edns.is_some() { OPT_LEN } else { 0 });
    let fit = emit(meta, queries, &a.answers, &[], &[], None, room)
        .map_or(0, |(_, h)| usize::from(h.counts.answers));
    let mut meta = *meta;
    meta.truncation = true;
    match emit(&meta, queries, &a.answers[..fit], &[], &[], edns, limit) {
        Ok((bytes, _)) => bytes,
        Err(_) => error(&meta, ResponseCode::ServFail),
    }
}

fn emit(
    meta: &Metadata,
    queries: &[Query],
    answers: &[Record],
    authority: &[Record],
    additionals: &[Record],
    edns: Option<&Edns>,
    limit: u16,
) -> Result<(Vec<u8>, Header), hickory_proto::ProtoError> {
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(limit);
    let header = emit_message_parts(
        meta,
        &mut queries.iter(),
        &mut answers.iter(),
        &mut authority.iter(),
        &mut additionals.iter(),
        edns,
        None,
        &mut encoder,
    )?;
    Ok((bytes, header))
}

/// A bare response carrying only `rcode` (no question: it may be what
/// could not be read).
fn error(request: &Metadata, rcode: ResponseCode) -> Vec<u8> {
    let mut meta = Metadata::response_from_request(request);
    meta.response_code = rcode;
    let mut out = Vec::with_capacity(12);
    let header = Header {
        metadata: meta,
        counts: Default::default(),
    };
    // Twelve bytes into a Vec cannot fail.
    let _ = hickory_proto::serialize::binary::BinEncodable::emit(
        &header,
        &mut BinEncoder::new(&mut out),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DnsConfig;
    use hickory_proto::rr::{Name, RecordType};

    fn request(edit: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 42;
        m.add_query(Query::query(
            Name::from_ascii("web.service.muster.").unwrap(),
            RecordType::A,
        ));
        edit(&mut m);
        m.to_vec().unwrap()
    }

    /// The response code the server (without a registry) gives `bytes`.
    fn check(bytes: &[u8], expect: Option<ResponseCode>) {
        let answerer = Answerer::new(&DnsConfig::default());
        let got = answerer
            .answer(bytes, Transport::Udp)
            .map(|r| Message::from_vec(&r).unwrap());
        if let Some(m) = &got {
            assert_eq!(m.metadata.id, 42);
            assert_eq!(m.metadata.message_type, MessageType::Response);
        }
        // Compared as numbers: 16 reads back as BADSIG, which shares
        // BADVERS's value (RFC 6891 §9, RFC 8945).
        let code = |c: ResponseCode| u16::from(c);
        assert_eq!(
            got.map(|m| code(m.metadata.response_code)),
            expect.map(code)
        );
    }

    #[test]
    fn requests_get_the_codes_they_deserve() {
        // Not ready yet: SERVFAIL in our domains, REFUSED elsewhere.
        check(&request(|_| {}), Some(ResponseCode::ServFail));
        check(
            &request(|m| {
                m.queries[0].name = Name::from_ascii("example.org.").unwrap();
            }),
            Some(ResponseCode::Refused),
        );
        check(
            &request(|m| m.metadata.op_code = OpCode::Status),
            Some(ResponseCode::NotImp),
        );
        check(
            &request(|m| {
                let q = m.queries[0].clone();
                m.add_query(q);
            }),
            Some(ResponseCode::FormErr),
        );
        check(&request(|m| m.queries.clear()), Some(ResponseCode::FormErr));
        check(
            &request(|m| {
                let mut e = Edns::new();
                e.set_version(1);
                m.set_edns(e);
            }),
            Some(ResponseCode::BADVERS),
        );
        // A truncated question: FORMERR, with the id it could read.
        let whole = request(|_| {});
        check(&whole[..whole.len() - 3], Some(ResponseCode::FormErr));
        // Nothing to answer: responses, and less than a header.
        check(
            &request(|m| m.metadata.message_type = MessageType::Response),
            None,
        );
        check(&whole[..11], None);
    }
}
