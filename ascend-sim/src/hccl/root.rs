//! The 4108-byte root info: what a peer needs to join a communicator — the shared-memory segment's
//! name and the random key that proves it was given the root info — with a format version and a
//! checksum, so that a corrupt or foreign blob is rejected (`HCCL_E_PARA`) instead of hanging.

use ascend_sys::{HcclRootInfo, HCCL_E_PARA};

const MAGIC: &[u8; 8] = b"ASCSIMRI";
/// Version of this layout; a blob of another version is rejected.
pub const FORMAT_VERSION: u32 = 1;

/// The decoded root info.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    /// Shared-memory segment name (without the leading `/`), e.g. `ascend-hccl-<hex>`.
    pub segment: String,
    /// Random key a joining rank must present.
    pub key: [u8; 16],
}

/// Prefix of every segment the simulator creates (stale ones are found by it).
pub const SEGMENT_PREFIX: &str = "ascend-hccl-";

/// N bytes from the kernel's random source: `getrandom`, or `/dev/urandom` where that call is
/// unavailable (old kernels, seccomp filters). Panics (an internal error at the C ABI) if neither
/// works: a guessable root info would let strangers join.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writes at most N - filled bytes into the buffer's tail.
        let r = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if r > 0 {
            filled += r as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            use std::io::Read;
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut b))
                .expect("no random source: getrandom failed and /dev/urandom is unreadable");
            break;
        }
    }
    b
}

fn checksum(data: &[u8]) -> u64 {
    // FNV-1a: enough to detect corruption (the key, not the checksum, is what keeps strangers out).
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl Root {
    /// A fresh root: an unguessable segment name and key.
    pub fn generate() -> Root {
        let id: [u8; 12] = random_bytes();
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        Root { segment: format!("{SEGMENT_PREFIX}{hex}"), key: random_bytes() }
    }

    /// Encodes into the C struct.
    pub fn encode(&self) -> HcclRootInfo {
        let mut raw = [0u8; 4108];
        raw[..8].copy_from_slice(MAGIC);
        raw[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        raw[12..28].copy_from_slice(&self.key);
        let name = self.segment.as_bytes();
        raw[28] = name.len() as u8;
        raw[29..29 + name.len()].copy_from_slice(name);
        let sum = checksum(&raw[..4100]);
        raw[4100..].copy_from_slice(&sum.to_le_bytes());
        HcclRootInfo { internal: raw.map(|b| b as std::ffi::c_char) }
    }

    /// Decodes and validates a blob; `Err` carries the reason (the code is `HCCL_E_PARA`).
    pub fn decode(info: &HcclRootInfo) -> Result<Root, (i32, String)> {
        let raw: Vec<u8> = info.internal.iter().map(|&c| c as u8).collect();
        let bad = |m: &str| Err((HCCL_E_PARA, m.to_string()));
        if &raw[..8] != MAGIC {
            return bad("root info was not made by HcclGetRootInfo of this library (bad magic)");
        }
        let version = u32::from_le_bytes(raw[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err((
                HCCL_E_PARA,
                format!("root info format {version} is not {FORMAT_VERSION} (another library version?)"),
            ));
        }
        if u64::from_le_bytes(raw[4100..].try_into().unwrap()) != checksum(&raw[..4100]) {
            return bad("root info is corrupt (checksum mismatch)");
        }
        let len = raw[28] as usize;
        let name = std::str::from_utf8(&raw[29..29 + len.min(200)])
            .map_err(|_| (HCCL_E_PARA, "bad segment name".to_string()))?;
        if !name.starts_with(SEGMENT_PREFIX) || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return bad("root info names an invalid segment");
        }
        Ok(Root { segment: name.to_string(), key: raw[12..28].try_into().unwrap() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let r = Root::generate();
        assert_ne!(r, Root::generate(), "random");
        let mut blob = r.encode();
        assert_eq!(Root::decode(&blob).unwrap(), r);
        blob.internal[100] ^= 1;
        assert_eq!(Root::decode(&blob).unwrap_err().0, HCCL_E_PARA);
        let mut other = r.encode();
        other.internal[8] = 9; // another format version
        assert!(Root::decode(&other).unwrap_err().1.contains("format"));
        assert!(Root::decode(&HcclRootInfo { internal: [0; 4108] }).is_err());
    }
}
