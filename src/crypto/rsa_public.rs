//! RSA public-key encryption with PKCS #1 v1.5 padding (RFC 8017 §7.2.1), for wrapping one
//! session key per recipient in OpenPGP (PKESK v3) and S/MIME (KeyTransRecipientInfo).
//!
//! Why our own: the pure-Rust backend under sequoia and the `rsa` crate computes `m^e mod n`
//! with a fixed 4-bit window over every bit of the exponent's 64-bit words, so the usual
//! `e = 65537` costs about 80 Montgomery products instead of 17. With RSA-3072 keys that was
//! 0.5 ms per message, most of PGP's relay cost. Here the exponent is walked bit by bit with
//! a Montgomery product (CIOS) on 64-bit limbs: only public values and the padded session key
//! are involved, and like the backends we replace this is variable-time arithmetic (sequoia
//! is built with `allow-variable-time-crypto`). Decryption is never done here.

use rand::RngCore;
use rsa::BigUint;

/// Why a key or message cannot go through the fast path; callers fall back to the library.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RsaError {
    /// The modulus is even, too short for PKCS #1 v1.5 (fewer than 12 bytes) or has a zero
    /// leading byte.
    #[error("unusable RSA modulus")]
    BadModulus,
    /// The exponent is even, below 3, or wider than 64 bits (no real key has one).
    #[error("unsupported RSA public exponent")]
    BadExponent,
    /// The message is longer than the modulus length minus 11 bytes (RFC 8017 §7.2.1).
    #[error("message too long for the RSA modulus")]
    MessageTooLong,
}

/// An RSA public key prepared for repeated encryption: the modulus as little-endian limbs
/// and the Montgomery constants.
#[derive(Debug, Clone)]
pub struct RsaPublic {
    /// Modulus, little-endian 64-bit limbs.
    n: Vec<u64>,
    /// Modulus length in bytes (k in RFC 8017).
    k: usize,
    /// Public exponent.
    e: u64,
    /// `-n^-1 mod 2^64`.
    n0inv: u64,
    /// `R^2 mod n` with `R = 2^(64 * limbs)`, to enter the Montgomery domain.
    r2: Vec<u64>,
}

impl RsaPublic {
    /// Prepares a key from its big-endian modulus and exponent bytes (leading zeros allowed).
    pub fn new(modulus: &[u8], exponent: &[u8]) -> Result<Self, RsaError> {
        let modulus = strip_zeros(modulus);
        let exponent = strip_zeros(exponent);
        if modulus.len() < 12 || modulus[modulus.len() - 1] & 1 == 0 {
            return Err(RsaError::BadModulus);
        }
        if exponent.is_empty() || exponent.len() > 8 {
            return Err(RsaError::BadExponent);
        }
        let e = exponent
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        if e < 3 || e & 1 == 0 {
            return Err(RsaError::BadExponent);
        }
        let n = limbs(modulus, modulus.len().div_ceil(8));
        let r2_big = (BigUint::from(1u8) << (128 * n.len())) % BigUint::from_bytes_be(modulus);
        let r2 = limbs(&r2_big.to_bytes_be(), n.len());
        // Newton's iteration doubles the correct low bits each round: 1 -> 64 in 6 rounds.
        let mut inv = 1u64;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(n[0].wrapping_mul(inv)));
        }
        Ok(Self {
            k: modulus.len(),
            n,
            e,
            n0inv: inv.wrapping_neg(),
            r2,
        })
    }

    /// The modulus length in bytes: the length of every ciphertext.
    pub fn len(&self) -> usize {
        self.k
    }

    /// Always false: a usable modulus has at least 12 bytes.
    pub fn is_empty(&self) -> bool {
        self.k == 0
    }

    /// RSAES-PKCS1-v1_5 encryption of `message`: `k` bytes, big-endian (RFC 8017 §7.2.1).
    pub fn encrypt_pkcs1v15(
        &self,
        message: &[u8],
        rng: &mut impl RngCore,
    ) -> Result<Vec<u8>, RsaError> {
        if message.len() + 11 > self.k {
            return Err(RsaError::MessageTooLong);
        }
        // EM = 0x00 || 0x02 || PS (non-zero random) || 0x00 || M
        let mut em = vec![0u8; self.k];
        em[1] = 2;
        let ps_end = self.k - message.len() - 1;
        for byte in &mut em[2..ps_end] {
            while *byte == 0 {
                *byte = (rng.next_u32() & 0xff) as u8;
            }
        }
        em[ps_end + 1..].copy_from_slice(message);
        Ok(self.raw(&em))
    }

    /// `m^e mod n` for a `k`-byte big-endian `m < n` (the leading 0x00 of EM ensures it).
    fn raw(&self, m: &[u8]) -> Vec<u8> {
        let s = self.n.len();
        let mut scratch = vec![0u64; s + 2];
        let mut base = vec![0u64; s];
        mont_mul(
            &limbs(m, s),
            &self.r2,
            &self.n,
            self.n0inv,
            &mut scratch,
            &mut base,
        );
        let mut acc = base.clone();
        let mut tmp = vec![0u64; s];
        for bit in (0..63 - self.e.leading_zeros()).rev() {
            mont_mul(&acc, &acc, &self.n, self.n0inv, &mut scratch, &mut tmp);
            std::mem::swap(&mut acc, &mut tmp);
            if self.e >> bit & 1 == 1 {
                mont_mul(&acc, &base, &self.n, self.n0inv, &mut scratch, &mut tmp);
                std::mem::swap(&mut acc, &mut tmp);
            }
        }
        let mut one = vec![0u64; s];
        one[0] = 1;
        mont_mul(&acc, &one, &self.n, self.n0inv, &mut scratch, &mut tmp);
        let mut out = Vec::with_capacity(s * 8);
        for limb in tmp.iter().rev() {
            out.extend_from_slice(&limb.to_be_bytes());
        }
        out.split_off(s * 8 - self.k)
    }
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Big-endian bytes (at most `count * 8` of them) to `count` little-endian limbs.
fn limbs(be: &[u8], count: usize) -> Vec<u64> {
    let mut out = vec![0u64; count];
    for (i, &b) in be.iter().rev().enumerate() {
        out[i / 8] |= u64::from(b) << (8 * (i % 8));
    }
    out
}

/// Montgomery product `a * b / R mod n` (CIOS, Koç et al. 1996) into `out`; `a, b < n`.
fn mont_mul(a: &[u64], b: &[u64], n: &[u64], n0inv: u64, t: &mut [u64], out: &mut [u64]) {
    let s = n.len();
    t.fill(0);
    for &bi in b {
        let mut carry = 0u64;
        for j in 0..s {
            let v = u128::from(t[j]) + u128::from(a[j]) * u128::from(bi) + u128::from(carry);
            t[j] = v as u64;
            carry = (v >> 64) as u64;
        }
        let v = u128::from(t[s]) + u128::from(carry);
        t[s] = v as u64;
        t[s + 1] = (v >> 64) as u64;
        let m = t[0].wrapping_mul(n0inv);
        let v = u128::from(t[0]) + u128::from(m) * u128::from(n[0]);
        let mut carry = (v >> 64) as u64;
        for j in 1..s {
            let v = u128::from(t[j]) + u128::from(m) * u128::from(n[j]) + u128::from(carry);
            t[j - 1] = v as u64;
            carry = (v >> 64) as u64;
        }
        let v = u128::from(t[s]) + u128::from(carry);
        t[s - 1] = v as u64;
        t[s] = t[s + 1] + (v >> 64) as u64;
    }
    // Here t < 2n: one conditional subtraction brings it below n.
    if t[s] != 0 || !below(&t[..s], n) {
        let mut borrow = false;
        for j in 0..s {
            let (d, b1) = t[j].overflowing_sub(n[j]);
            let (d, b2) = d.overflowing_sub(u64::from(borrow));
            t[j] = d;
            borrow = b1 || b2;
        }
    }
    out.copy_from_slice(&t[..s]);
}

/// `a < b` for equal-length little-endian limb slices.
fn below(a: &[u64], b: &[u64]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::traits::PublicKeyParts as _;
    use rsa::{Pkcs1v15Encrypt, RsaPrivateKey};

    fn key(bits: usize) -> RsaPrivateKey {
        let mut rng = crate::crypto::smime::CompatRng::new();
        RsaPrivateKey::new(&mut rng, bits).unwrap_or_else(|e| panic!("keygen: {e}"))
    }

    fn prepared(k: &RsaPrivateKey) -> RsaPublic {
        RsaPublic::new(&k.n().to_bytes_be(), &k.e().to_bytes_be())
            .unwrap_or_else(|e| panic!("prepare: {e}"))
    }

    #[test]
    fn raw_power_matches_the_bigint_library_for_many_inputs_and_sizes() {
        for bits in [1024, 1536, 2048, 2056] {
            let k = key(bits);
            let p = prepared(&k);
            assert_eq!(p.len(), k.size());
            for seed in 0..20u8 {
                let mut m = vec![0u8; p.len()];
                for (i, b) in m.iter_mut().enumerate().skip(1) {
                    *b = (i as u8)
                        .wrapping_mul(31)
                        .wrapping_add(seed.wrapping_mul(97));
                }
                if seed == 0 {
                    m[1..].fill(0xff); // the largest EM-shaped value
                    m[p.len() - 1] = 0;
                }
                let expected = BigUint::from_bytes_be(&m).modpow(k.e(), k.n());
                let got = p.raw(&m);
                assert_eq!(got.len(), p.len());
                assert_eq!(
                    BigUint::from_bytes_be(&got),
                    expected,
                    "{bits} bits, seed {seed}"
                );
            }
        }
    }

    #[test]
    fn the_private_key_decrypts_what_we_encrypt() {
        let k = key(2048);
        let p = prepared(&k);
        let mut rng = rand::rng();
        for len in [0usize, 1, 35, 245] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let c = p
                .encrypt_pkcs1v15(&msg, &mut rng)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.len(), 256);
            let back = k
                .decrypt(Pkcs1v15Encrypt, &c)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back, msg);
        }
        // Two encryptions of one message differ (random padding).
        let a = p
            .encrypt_pkcs1v15(b"k", &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = p
            .encrypt_pkcs1v15(b"k", &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        assert_eq!(
            p.encrypt_pkcs1v15(&[0u8; 246], &mut rng),
            Err(RsaError::MessageTooLong)
        );
    }

    #[test]
    fn unusable_keys_are_refused_not_computed_with() {
        let k = key(1024);
        let n = k.n().to_bytes_be();
        let mut even = n.clone();
        *even.last_mut().unwrap_or_else(|| panic!("empty")) &= 0xfe;
        assert_eq!(
            RsaPublic::new(&even, &[1, 0, 1]).err(),
            Some(RsaError::BadModulus)
        );
        assert_eq!(
            RsaPublic::new(&[0, 0, 0x0d], &[3]).err(),
            Some(RsaError::BadModulus)
        );
        assert_eq!(RsaPublic::new(&n, &[2]).err(), Some(RsaError::BadExponent));
        assert_eq!(RsaPublic::new(&n, &[1]).err(), Some(RsaError::BadExponent));
        assert_eq!(RsaPublic::new(&n, &[]).err(), Some(RsaError::BadExponent));
        assert_eq!(
            RsaPublic::new(&n, &[1; 9]).err(),
            Some(RsaError::BadExponent)
        );
        // Leading zero bytes, as MPIs and DER integers may carry, are accepted.
        let mut padded = vec![0u8, 0];
        padded.extend_from_slice(&n);
        assert!(RsaPublic::new(&padded, &[0, 1, 0, 1]).is_ok());
    }
}
