//! The batch body of the HTTP transport: how the agent's HTTP sink frames several wire records
//! ([`crate::schema::encode_wire`]) into one POST body, and how the aggregator's ingest endpoint
//! splits it again. Both sides use this one definition.
//!
//! A body is a sequence of records, each a `u32` little-endian length followed by that many
//! bytes; nothing before, between or after. An empty body is an empty batch. The framing says
//! nothing about the records themselves: a record that does not decode with
//! [`crate::schema::decode_wire`] is the receiver's to count and skip, while a body whose framing
//! is broken is refused as a whole (its record boundaries cannot be trusted).

/// Media type of a batch body (the `Content-Type` of the POST).
pub const CONTENT_TYPE: &str = "application/vnd.selfheal.wire-batch";

/// Bytes of framing added per record.
pub const FRAME_OVERHEAD_BYTES: usize = 4;

/// A record too long for its `u32` length prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {index} is {bytes} bytes, more than a batch frame holds")]
pub struct BatchEncodeError {
    /// Position of the record in the batch.
    pub index: usize,
    /// Its length.
    pub bytes: usize,
}

/// Encodes records as a batch body. Fails only for a record of 4 GiB or more (the agent's
/// records are at most 1 MiB, the Kinesis limit every sink honours).
pub fn encode_batch<'a>(
    records: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<u8>, BatchEncodeError> {
    let mut out = Vec::new();
    for (index, r) in records.into_iter().enumerate() {
        let len = u32::try_from(r.len()).map_err(|_| BatchEncodeError {
            index,
            bytes: r.len(),
        })?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(r);
    }
    Ok(out)
}

/// A batch body whose framing does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batch body truncated at byte {offset}")]
pub struct BatchDecodeError {
    /// Offset of the length prefix of the record that runs past the end of the body.
    pub offset: usize,
}

/// Splits a batch body into its wire records, borrowed from `body`.
pub fn decode_batch(body: &[u8]) -> Result<Vec<&[u8]>, BatchDecodeError> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let offset = body.len() - rest.len();
        let Some((len, tail)) = rest.split_first_chunk::<FRAME_OVERHEAD_BYTES>() else {
            return Err(BatchDecodeError { offset });
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(BatchDecodeError { offset });
        }
        let (record, tail) = tail.split_at(len);
        out.push(record);
        rest = tail;
    }
    Ok(out)
}

#[cfg(test)]
#[path = "batch_fuzz.rs"]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_body_round_trips_and_truncation_is_an_error() {
        let recs: [&[u8]; 3] = [b"one", b"", b"three"];
        let body = encode_batch(recs).expect("encodes");
        assert_eq!(body.len(), 8 + 3 * FRAME_OVERHEAD_BYTES);
        assert_eq!(decode_batch(&body).expect("decodes"), recs.to_vec());
        assert_eq!(decode_batch(&[]).expect("empty"), Vec::<&[u8]>::new());
        // Cut inside the last record, then inside a length prefix.
        let err = decode_batch(&body[..body.len() - 1]).expect_err("truncated");
        assert_eq!(err.offset, 11);
        let err = decode_batch(&body[..2]).expect_err("truncated prefix");
        assert_eq!(err.offset, 0);
    }

    #[test]
    fn a_length_prefix_past_the_end_is_an_error_not_a_panic() {
        let mut body = encode_batch([b"ok".as_slice()]).expect("encodes");
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(b"short");
        assert_eq!(
            decode_batch(&body).expect_err("huge length"),
            BatchDecodeError { offset: 6 }
        );
    }
}
