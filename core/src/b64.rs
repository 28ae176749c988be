//! Base64, the two ways the project needs it: standard with padding (PEM,
//! `x5c`) and URL-safe without padding (JWS). Strict like the `base64`
//! crate's defaults: canonical padding only, no characters outside the
//! alphabet, no non-zero trailing bits. Written here rather than taken from
//! a crate because the Wasm filter has no room for a general engine
//! (about 4 KB smaller), and it never panics (no indexing).

/// An alphabet and whether output is padded with `=`.
#[derive(Clone, Copy)]
pub struct Engine {
    alphabet: &'static [u8; 64],
    pad: bool,
}

pub const STANDARD: Engine = Engine { alphabet: b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", pad: true };
pub const URL_SAFE_NO_PAD: Engine = Engine { alphabet: b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", pad: false };

/// Not base64 of this engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid base64")
    }
}

impl std::error::Error for DecodeError {}

impl Engine {
    fn value(&self, c: u8) -> Option<u32> {
        self.alphabet.iter().position(|&a| a == c).map(|p| p as u32)
    }

    fn symbol(&self, v: u32) -> char {
        self.alphabet.get((v & 63) as usize).map(|&c| c as char).unwrap_or('A')
    }

    pub fn encode(&self, input: impl AsRef<[u8]>) -> String {
        let input = input.as_ref();
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
            let n = (b(0) << 16) | (b(1) << 8) | b(2);
            let chars = chunk.len() + 1;
            for k in 0..4 {
                if k < chars {
                    out.push(self.symbol(n >> (18 - 6 * k)));
                } else if self.pad {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(&self, input: impl AsRef<[u8]>) -> Result<Vec<u8>, DecodeError> {
        let mut input = input.as_ref();
        if self.pad {
            if input.len() % 4 != 0 {
                return Err(DecodeError);
            }
            let pads = input.iter().rev().take_while(|&&c| c == b'=').count();
            if pads > 2 {
                return Err(DecodeError);
            }
            input = input.get(..input.len() - pads).ok_or(DecodeError)?;
        }
        if input.len() % 4 == 1 {
            return Err(DecodeError);
        }
        let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
        for chunk in input.chunks(4) {
            let mut n = 0u32;
            for &c in chunk {
                n = (n << 6) | self.value(c).ok_or(DecodeError)?;
            }
            match chunk.len() {
                4 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]),
                3 => {
                    if n & 0b11 != 0 {
                        return Err(DecodeError);
                    }
                    out.extend_from_slice(&[(n >> 10) as u8, (n >> 2) as u8]);
                }
                2 => {
                    if n & 0b1111 != 0 {
                        return Err(DecodeError);
                    }
                    out.push((n >> 4) as u8);
                }
                _ => return Err(DecodeError),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn agrees_with_the_base64_crate_both_ways() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for len in 0..200 {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let (s, u) = (STANDARD.encode(&data), URL_SAFE_NO_PAD.encode(&data));
            assert_eq!(s, base64::engine::general_purpose::STANDARD.encode(&data));
            assert_eq!(u, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&data));
            assert_eq!(STANDARD.decode(&s).unwrap(), data);
            assert_eq!(URL_SAFE_NO_PAD.decode(&u).unwrap(), data);
        }
    }

    #[test]
    fn refuses_what_the_base64_crate_refuses() {
        let cases: &[&str] =
            &["A", "AB", "ABC", "AB=", "A===", "AB==AB==", "QQ=A", "QR==", "QUF=", "Zm9v!", "Zm9v\n", "====", "Zm9vYg", "Zm9vYmE", "Zm-_"];
        for c in cases {
            assert_eq!(STANDARD.decode(c).is_ok(), base64::engine::general_purpose::STANDARD.decode(c).is_ok(), "STANDARD {c:?}");
        }
        let cases: &[&str] = &["A", "AB", "ABC", "QR", "QUF", "QQ==", "Zm9v+", "Zm9v/", "Zm-_", "Zm9vYg", "Zm9vYmE", ""];
        for c in cases {
            assert_eq!(
                URL_SAFE_NO_PAD.decode(c).is_ok(),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).is_ok(),
                "URL_SAFE_NO_PAD {c:?}"
            );
        }
    }
}
