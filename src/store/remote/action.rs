//! The `ac/<key>` record: a minimal REAPI `ActionResult` (protobuf), so stock Bazel caches
//! that check what is stored under `ac/` (bazel-remote does) accept it. It lists the
//! entry's `manifest.json` (and its signatures, `manifest.sig`) as output files by digest;
//! the outputs themselves are reached through the manifest.
//!
//! The subset written (field numbers from `build/bazel/remote/execution/v2`):
//! ```text
//! ActionResult { repeated OutputFile output_files = 2; }
//! OutputFile   { string path = 1; Digest digest = 2; }
//! Digest       { string hash = 1; int64 size_bytes = 2; }
//! ```
//! Reading skips every field it does not know, so a server that re-encodes the record
//! with more in it is still understood.

/// One output file of the record: a path and the CAS blob holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutputFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

const LEN: u8 = 2;
const VARINT: u8 = 0;

/// Whether `text` is a sha256 as the protocol writes it (64 lowercase hex digits): what
/// the server says goes into a URL only so.
pub(crate) fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Encodes the files as an `ActionResult`.
pub(crate) fn encode(files: &[OutputFile]) -> Vec<u8> {
    let mut out = Vec::new();
    for file in files {
        let mut digest = Vec::new();
        put_bytes(&mut digest, 1, file.sha256.as_bytes());
        put_tag(&mut digest, 2, VARINT);
        put_varint(&mut digest, file.size);
        let mut output = Vec::new();
        put_bytes(&mut output, 1, file.path.as_bytes());
        put_bytes(&mut output, 2, &digest);
        put_bytes(&mut out, 2, &output);
    }
    out
}

/// Reads the output files of an `ActionResult`; anything malformed is an error naming it.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<OutputFile>, String> {
    let mut files = Vec::new();
    for (field, value) in fields(bytes)? {
        if let (2, Value::Bytes(output)) = (field, value) {
            let mut file = OutputFile {
                path: String::new(),
                sha256: String::new(),
                size: 0,
            };
            for (field, value) in fields(output)? {
                match (field, value) {
                    (1, Value::Bytes(path)) => file.path = text(path)?,
                    (2, Value::Bytes(digest)) => {
                        for (field, value) in fields(digest)? {
                            match (field, value) {
                                (1, Value::Bytes(hash)) => file.sha256 = text(hash)?,
                                (2, Value::Varint(size)) => file.size = size,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !is_sha256(&file.sha256) {
                return Err(format!(
                    "`{}` is named by `{}`, not a sha256",
                    file.path, file.sha256
                ));
            }
            files.push(file);
        }
    }
    Ok(files)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The (field number, value) pairs of one message.
fn fields(mut bytes: &[u8]) -> Result<Vec<(u64, Value<'_>)>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let tag = varint(&mut bytes)?;
        let value = match tag & 7 {
            0 => Value::Varint(varint(&mut bytes)?),
            1 => Value::Fixed.skip(&mut bytes, 8)?,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).map_err(|_| "a huge length")?;
                let (value, rest) = bytes
                    .split_at_checked(len)
                    .ok_or("a field longer than the record")?;
                bytes = rest;
                Value::Bytes(value)
            }
            5 => Value::Fixed.skip(&mut bytes, 4)?,
            other => return Err(format!("protobuf wire type {other} is not supported")),
        };
        out.push((tag >> 3, value));
    }
    Ok(out)
}

impl<'a> Value<'a> {
    fn skip(self, bytes: &mut &[u8], n: usize) -> Result<Value<'a>, String> {
        *bytes = bytes.get(n..).ok_or("a field longer than the record")?;
        Ok(self)
    }
}

fn varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or("a number cut short")?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a number longer than 64 bits".into())
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string that is not UTF-8".into())
}

fn put_tag(out: &mut Vec<u8>, field: u64, wire: u8) {
    put_varint(out, field << 3 | u64::from(wire));
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_tag(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_unknown_fields_are_skipped() {
        let files = vec![
            OutputFile {
                path: "manifest.json".into(),
                sha256: "ab".repeat(32),
                size: 300_000,
            },
            OutputFile {
                path: "manifest.sig".into(),
                sha256: "cd".repeat(32),
                size: 0,
            },
        ];
        let bytes = encode(&files);
        assert_eq!(decode(&bytes).unwrap(), files);
        // protoc --encode of the same record begins so: field 2, then its length.
        assert_eq!(bytes[0], 0x12);

        // A server's re-encoding with more fields (exit_code = 4, a fixed64, is_executable).
        let mut more = vec![0x20, 0x00, 0x31, 1, 2, 3, 4, 5, 6, 7, 8];
        more.extend_from_slice(&bytes);
        assert_eq!(decode(&more).unwrap(), files);

        let odd = encode(&[OutputFile {
            path: "manifest.json".into(),
            sha256: "../../x".into(),
            size: 1,
        }]);
        for bad in [
            &bytes[..bytes.len() - 1],
            &[0x12, 0xff][..],
            &[0x13][..],
            &odd[..],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
