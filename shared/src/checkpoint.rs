//! Signed checkpoints of the log's Merkle tree: the C2SP `tlog-checkpoint`
//! body (origin, tree size, root hash in base64) in a C2SP `signed-note`
//! with one Ed25519 signature. Keys use the note formats:
//! `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 ‖ seed)>` for the signer,
//! `<name>+<key id hex>+<base64(0x01 ‖ public key)>` for verifiers, the key
//! id being the first four bytes of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// Signature type byte of Ed25519 in signed notes.
const ED25519: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("the key is not in the signed-note key format")]
    BadKey,
    #[error("the note is not a signed note")]
    Malformed,
    #[error("no signature of this key verifies the note")]
    NotSigned,
    #[error("the note is not a checkpoint: {0}")]
    NotACheckpoint(&'static str),
}

fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The key that signs checkpoints (from a file or the environment; never
/// from the database).
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl NoteSigner {
    /// A signer for `name` with the 32-byte Ed25519 `seed`.
    pub fn new(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::BadKey);
        }
        let key = SigningKey::from_bytes(&seed);
        Ok(Self {
            name: name.to_owned(),
            id: key_id(name, key.verifying_key().as_bytes()),
            key,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<id hex>+<base64(0x01 ‖ seed)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::BadKey)?;
        // Names hold no `+`, ids are hex; the base64 key may hold `+`.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadKey);
        };
        let bytes = STANDARD.decode(key).map_err(|_| NoteError::BadKey)?;
        let seed: [u8; 32] = match bytes.split_first() {
            Some((&ED25519, seed)) => seed.try_into().map_err(|_| NoteError::BadKey)?,
            _ => return Err(NoteError::BadKey),
        };
        let signer = Self::new(name, seed)?;
        if u32::from_str_radix(id, 16) != Ok(signer.id) {
            return Err(NoteError::BadKey);
        }
        Ok(signer)
    }

    /// The signer in the format [`NoteSigner::parse`] reads.
    pub fn to_private_text(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            STANDARD.encode(bytes)
        )
    }

    /// The verifier key to hand to auditors.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// The signed note of `text` (which must end in a newline).
    pub fn sign(&self, text: &str) -> String {
        debug_assert!(text.ends_with('\n'));
        let signature = self.key.sign(text.as_bytes());
        let mut bytes = self.id.to_be_bytes().to_vec();
        bytes.extend_from_slice(&signature.to_bytes());
        format!(
            "{text}\n\u{2014} {} {}\n",
            self.name,
            STANDARD.encode(bytes)
        )
    }
}

/// A public key that verifies checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// The key's name (by convention the log's origin).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parses `<name>+<id hex>+<base64(0x01 ‖ public key)>`.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadKey);
        };
        if !valid_name(name) {
            return Err(NoteError::BadKey);
        }
        let bytes = STANDARD.decode(key).map_err(|_| NoteError::BadKey)?;
        let public: [u8; 32] = match bytes.split_first() {
            Some((&ED25519, public)) => public.try_into().map_err(|_| NoteError::BadKey)?,
            _ => return Err(NoteError::BadKey),
        };
        let key = VerifyingKey::from_bytes(&public).map_err(|_| NoteError::BadKey)?;
        let computed = key_id(name, &public);
        if u32::from_str_radix(id, 16) != Ok(computed) {
            return Err(NoteError::BadKey);
        }
        Ok(Self {
            name: name.to_owned(),
            id: computed,
            key,
        })
    }

    /// The key in the format [`NoteVerifier::parse`] reads.
    pub fn to_text(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, STANDARD.encode(bytes))
    }

    /// The text of `note` if a signature of this key verifies it.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note.rfind("\n\n").ok_or(NoteError::Malformed)?;
        let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
        if note.chars().any(|c| c.is_control() && c != '\n') || !signatures.ends_with('\n') {
            return Err(NoteError::Malformed);
        }
        for line in signatures.lines() {
            let rest = line.strip_prefix("\u{2014} ").ok_or(NoteError::Malformed)?;
            let (name, encoded) = rest.rsplit_once(' ').ok_or(NoteError::Malformed)?;
            let bytes = STANDARD.decode(encoded).map_err(|_| NoteError::Malformed)?;
            if name != self.name || bytes.len() != 4 + 64 || bytes[..4] != self.id.to_be_bytes() {
                continue;
            }
            let signature = Signature::from_slice(&bytes[4..]).map_err(|_| NoteError::Malformed)?;
            return self
                .key
                .verify(text.as_bytes(), &signature)
                .map(|()| text)
                .map_err(|_| NoteError::NotSigned);
        }
        Err(NoteError::NotSigned)
    }
}

/// A checkpoint: the log (`origin`), the tree size and its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: `<origin>\n<size>\n<base64 root>\n`.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// The checkpoint a verified note's text holds (extension lines after
    /// the root are allowed and ignored).
    pub fn from_text(text: &str) -> Result<Self, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::NotACheckpoint("no origin"))?;
        let size = lines
            .next()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()) && (*s == "0" || !s.starts_with('0')))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(NoteError::NotACheckpoint(
                "the size is not a decimal number",
            ))?;
        let root = lines
            .next()
            .and_then(|r| STANDARD.decode(r).ok())
            .and_then(|r| <Hash>::try_from(r.as_slice()).ok())
            .ok_or(NoteError::NotACheckpoint(
                "the root is not a base64 SHA-256 hash",
            ))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    pub fn sign(&self, signer: &NoteSigner) -> String {
        signer.sign(&self.text())
    }

    /// The checkpoint in `note`, if `verifier` signed it for `origin`.
    pub fn verify(note: &str, verifier: &NoteVerifier, origin: &str) -> Result<Self, NoteError> {
        let checkpoint = Self::from_text(verifier.open(note)?)?;
        if checkpoint.origin != origin {
            return Err(NoteError::NotACheckpoint("another log's origin"));
        }
        Ok(checkpoint)
    }
}

/// Why a later checkpoint does not continue an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrowthError {
    #[error(
        "the log shrank: a checkpoint of {new} events follows one of {old} (events were removed)"
    )]
    Shrank { old: u64, new: u64 },
    #[error("the log forked: two checkpoints of {size} events have different roots")]
    Forked { size: u64 },
    #[error("the checkpoint of {new} events does not continue the one of {old}: {error} (the log's past was rewritten)")]
    Inconsistent {
        old: u64,
        new: u64,
        error: crate::merkle::ProofError,
    },
}

impl Checkpoint {
    /// Checks that `next` only appends to this checkpoint's tree, given the
    /// consistency proof between their sizes (empty when the sizes are
    /// equal). A first checkpoint of size 0 is continued by anything.
    pub fn continued_by(&self, next: &Checkpoint, proof: &[Hash]) -> Result<(), GrowthError> {
        if next.size < self.size {
            return Err(GrowthError::Shrank {
                old: self.size,
                new: next.size,
            });
        }
        if next.size == self.size {
            return if next.root == self.root {
                Ok(())
            } else {
                Err(GrowthError::Forked { size: self.size })
            };
        }
        if self.size == 0 {
            return Ok(());
        }
        crate::merkle::verify_consistency(self.size, next.size, &self.root, &next.root, proof)
            .map_err(|error| GrowthError::Inconsistent {
                old: self.size,
                new: next.size,
                error,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str, byte: u8) -> NoteSigner {
        NoteSigner::new(name, [byte; 32]).unwrap()
    }

    #[test]
    fn a_checkpoint_is_continued_only_by_an_appending_one() {
        use crate::merkle::{consistency_proof, leaf_hash, root, InMemory};
        let leaves: Vec<Hash> = (0..20u8).map(|i| leaf_hash(&[i])).collect();
        let at = |size: usize| Checkpoint {
            origin: "o".into(),
            size: size as u64,
            root: root(&mut InMemory::new(&leaves[..size]), size as u64).unwrap(),
        };
        let proof =
            |old: u64, new: u64| consistency_proof(&mut InMemory::new(&leaves), old, new).unwrap();
        assert_eq!(at(7).continued_by(&at(13), &proof(7, 13)), Ok(()));
        assert_eq!(at(13).continued_by(&at(13), &[]), Ok(()));
        assert_eq!(at(0).continued_by(&at(13), &[]), Ok(()));
        assert_eq!(
            at(13).continued_by(&at(7), &[]),
            Err(GrowthError::Shrank { old: 13, new: 7 })
        );
        let mut forked = at(13);
        forked.root[0] ^= 1;
        assert_eq!(
            at(13).continued_by(&forked, &[]),
            Err(GrowthError::Forked { size: 13 })
        );
        assert!(matches!(
            at(7).continued_by(&forked, &proof(7, 13)),
            Err(GrowthError::Inconsistent {
                old: 7,
                new: 13,
                ..
            })
        ));
    }

    #[test]
    fn a_checkpoint_signs_and_verifies_in_the_note_format() {
        let key = signer("research.example/log", 7);
        let checkpoint = Checkpoint {
            origin: "research.example/log".into(),
            size: 1234,
            root: [9; 32],
        };
        let note = checkpoint.sign(&key);
        let (text, signature) = note.split_once("\n\n").unwrap();
        assert_eq!(format!("{text}\n"), checkpoint.text());
        assert_eq!(text.lines().nth(1), Some("1234"));
        assert!(signature.starts_with("\u{2014} research.example/log "));
        let verifier = NoteVerifier::parse(&key.verifier().to_text()).unwrap();
        assert_eq!(
            Checkpoint::verify(&note, &verifier, "research.example/log"),
            Ok(checkpoint.clone())
        );
        // Keys round-trip through their text forms.
        let again = NoteSigner::parse(&key.to_private_text()).unwrap();
        assert_eq!(
            again.sign(&checkpoint.text()),
            note,
            "Ed25519 is deterministic"
        );
    }

    #[test]
    fn the_published_note_vector_is_reproduced_byte_for_byte() {
        // The example of the signed-note format's reference implementation
        // (golang.org/x/mod/sumdb/note): an independent check of key ids,
        // key texts and signature lines.
        let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let note = format!(
            "{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
        );
        let signer = NoteSigner::parse(skey).unwrap();
        assert_eq!(signer.sign(text), note);
        assert_eq!(signer.to_private_text(), skey);
        assert_eq!(signer.verifier().to_text(), vkey);
        assert_eq!(NoteVerifier::parse(vkey).unwrap().open(&note), Ok(text));
    }

    #[test]
    fn another_key_a_changed_text_or_another_origin_is_refused() {
        let key = signer("research.example/log", 7);
        let checkpoint = Checkpoint {
            origin: "research.example/log".into(),
            size: 10,
            root: [1; 32],
        };
        let note = checkpoint.sign(&key);
        let verifier = key.verifier();
        let other = signer("research.example/log", 8).verifier();
        assert_eq!(
            Checkpoint::verify(&note, &other, "research.example/log"),
            Err(NoteError::NotSigned)
        );
        let forged = note.replacen("\n10\n", "\n11\n", 1);
        assert_eq!(
            Checkpoint::verify(&forged, &verifier, "research.example/log"),
            Err(NoteError::NotSigned)
        );
        assert!(Checkpoint::verify(&note, &verifier, "elsewhere").is_err());
        assert!(NoteVerifier::parse("name+00000000+AQ==").is_err());
        let text = verifier.to_text();
        let wrong_id = text.replacen('+', "+f", 1).replacen("+f", "+", 0);
        assert!(NoteVerifier::parse(
            &wrong_id.replace(&format!("{:08x}", verifier.id), "00000000")
        )
        .is_err());
        assert!(NoteSigner::new("has space", [0; 32]).is_err());
    }
}
