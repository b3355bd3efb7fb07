//! Crypto-shredding: every piece of personal data in an event is stored encrypted under a data
//! key of its own person (the event's *subject*), and destroying that key erases the person from
//! every copy of the events at once: the event store, the JetStream stream, the backups.
//!
//! - A **data key** is 32 random bytes per person, held in `user_data_key` wrapped (sealed) under
//!   the key-encryption key (`DATA_KEY_FILE`), so a copy of the database alone opens nothing.
//! - A **sealed value** is a JSON string `pii:v1:<base64url(nonce ‖ ciphertext)>`, XChaCha20-
//!   Poly1305 with the subject's id and the field's name as associated data (a value cannot be
//!   moved to another person or field). Events keep their shape: a string stays a string.
//! - What is sealed: in the payload, the fields in [`PERSONAL_FIELDS`] and every string of a
//!   `changes` object (profile texts); in the metadata, [`PERSONAL_METADATA`] (IP address, user
//!   agent). The subject's id is written to the metadata as `subject`.
//! - **Opening** needs the wrapped key, which readers fetch with the events (`data_key`). Without
//!   it (the person was deleted) a sealed string opens as `""` and sealed metadata as absent:
//!   what a read model then builds is the same anonymous row deletion leaves.
//! - Identities (e-mail, username) are unique under a keyed hash ([`Vault::identity_hash`]), so
//!   the look-up table holds no address either.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The prefix of a sealed value.
pub const SEALED: &str = "pii:v1:";
/// Payload fields that hold personal data (at the event's top level).
pub const PERSONAL_FIELDS: &[&str] = &["email", "username", "email_key", "username_key"];
/// A payload object whose every string is personal (the profile texts of `ProfileUpdated`).
pub const PERSONAL_OBJECT: &str = "changes";
/// Metadata entries that hold personal data.
pub const PERSONAL_METADATA: &[&str] = &["ip", "user_agent"];
/// The metadata entry naming whose data key seals the event.
pub const SUBJECT: &str = "subject";

const NONCE: usize = 24;
const TAG: usize = 16;
/// Data keys kept unwrapped in memory for writing (never used to open: a reader always fetches
/// the key with the events, so a destroyed key opens nothing anywhere).
const CACHE: usize = 4096;

/// One person's data key, unwrapped.
#[derive(Clone)]
pub struct DataKey(Arc<XChaCha20Poly1305>);

impl DataKey {
    fn seal(&self, subject: Uuid, field: &str, plain: &str) -> String {
        let sealed = seal_bytes(&self.0, &associated(subject, field), plain.as_bytes());
        format!("{SEALED}{}", URL_SAFE_NO_PAD.encode(sealed))
    }

    fn open(&self, subject: Uuid, field: &str, sealed: &str) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed.strip_prefix(SEALED)?).ok()?;
        String::from_utf8(open_bytes(&self.0, &associated(subject, field), &bytes)?).ok()
    }
}

/// `nonce ‖ ciphertext` of `msg` under `cipher` with a random 24-byte nonce and `aad` bound to it.
pub fn seal_bytes(cipher: &XChaCha20Poly1305, aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    // Encryption with a valid key and nonce cannot fail.
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg, aad })
        .unwrap_or_default();
    [nonce.as_slice(), &sealed].concat()
}

/// What [`seal_bytes`] sealed under `cipher` and `aad`; `None` for anything else.
pub fn open_bytes(cipher: &XChaCha20Poly1305, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE + TAG {
        return None;
    }
    let (nonce, msg) = sealed.split_at(NONCE);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg, aad })
        .ok()
}

fn associated(subject: Uuid, field: &str) -> Vec<u8> {
    let mut aad = subject.as_bytes().to_vec();
    aad.extend_from_slice(field.as_bytes());
    aad
}

/// Whether a JSON string is a sealed value.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED)
}

/// The key-encryption key and what is derived from it.
#[derive(Clone)]
pub struct Vault {
    kek: Arc<XChaCha20Poly1305>,
    identity: Arc<[u8; 32]>,
    cache: Arc<Mutex<hashlink::LruCache<Uuid, DataKey>>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault")
    }
}

impl Vault {
    pub fn new(kek: [u8; 32]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&kek).unwrap_or_else(|_| {
            // HMAC takes keys of any length.
            unreachable!()
        });
        mac.update(b"accounts identity hash v1");
        let identity: [u8; 32] = mac.finalize().into_bytes().into();
        Self {
            kek: Arc::new(XChaCha20Poly1305::new((&kek).into())),
            identity: Arc::new(identity),
            cache: Arc::new(Mutex::new(hashlink::LruCache::new(CACHE))),
        }
    }

    /// The key an identity is unique and looked up under: HMAC-SHA-256 of its kind and canonical
    /// form, hex. Without the key-encryption key it reveals nothing; with it, one can only test
    /// a guessed address.
    pub fn identity_hash(&self, kind: &str, canonical: &str) -> String {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.identity.as_ref()) else {
            unreachable!()
        };
        mac.update(kind.as_bytes());
        mac.update(b":");
        mac.update(canonical.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A new data key for `subject`: the key, and its wrapped form for `user_data_key`.
    pub fn new_data_key(&self, subject: Uuid) -> (DataKey, Vec<u8>) {
        let key = XChaCha20Poly1305::generate_key(&mut rand::rngs::OsRng);
        let wrapped = seal_bytes(&self.kek, subject.as_bytes(), key.as_slice());
        (DataKey(Arc::new(XChaCha20Poly1305::new(&key))), wrapped)
    }

    /// Unwraps a stored data key (`None` if it is not one of this key-encryption key's).
    pub fn unwrap_key(&self, subject: Uuid, wrapped: &[u8]) -> Option<DataKey> {
        let key = open_bytes(&self.kek, subject.as_bytes(), wrapped)?;
        (key.len() == 32).then(|| DataKey(Arc::new(XChaCha20Poly1305::new(key.as_slice().into()))))
    }

    /// The data key of `subject` for writing: from memory, else the stored one, else a new one
    /// stored now (one statement; concurrent writers agree on the first stored). `None` for a
    /// deleted person (a tombstone): what is written for them is sealed under no stored key.
    pub async fn key_for_writing(
        &self,
        db: impl sqlx::PgExecutor<'_>,
        subject: Uuid,
    ) -> anyhow::Result<Option<DataKey>> {
        if let Some(key) = self.cached_key(subject) {
            return Ok(Some(key));
        }
        let (_, wrapped) = self.new_data_key(subject);
        let stored: Option<Vec<u8>> = sqlx::query_scalar(
            "insert into user_data_key (user_id, wrapped) values ($1, $2)
             on conflict (user_id) do update set user_id = excluded.user_id
             returning wrapped",
        )
        .bind(subject)
        .bind(&wrapped)
        .fetch_one(db)
        .await?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let key = self
            .unwrap_key(subject, &stored)
            .ok_or_else(|| anyhow::anyhow!("a stored data key does not open with DATA_KEY_FILE"))?;
        self.remember_key(subject, &key);
        Ok(Some(key))
    }

    /// The keyed check value of this key-encryption key (`data_key_check`).
    fn check_value(&self) -> Vec<u8> {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.identity.as_ref()) else {
            unreachable!()
        };
        mac.update(b"accounts key-encryption key check v1");
        mac.finalize().into_bytes().to_vec()
    }

    /// Refuses a key-encryption key the database's data keys were not wrapped under (another
    /// `DATA_KEY_FILE`, e.g. a host started without the deployment's): with it every personal
    /// value would read as erased and every identity hash would differ. The first process to
    /// start on a database records its key's check value; it stands for good (an operator who
    /// replaces a lost key on purpose deletes the `data_key_check` row).
    pub async fn verify(&self, pool: &sqlx::PgPool) -> anyhow::Result<()> {
        let check = self.check_value();
        let recorded: Vec<u8> = sqlx::query_scalar(
            "insert into data_key_check (check_value) values ($1)
             on conflict (id) do update set id = excluded.id
             returning check_value",
        )
        .bind(&check)
        .fetch_one(pool)
        .await?;
        anyhow::ensure!(
            recorded == check,
            "DATA_KEY_FILE is not the key-encryption key this database's data keys are wrapped \
             under: every process of a deployment needs the same file"
        );
        Ok(())
    }

    /// Seals a short text under the key-encryption key itself, for `subject`'s farewell mail
    /// (`erasure_notice`): it outlives the data key by the minutes the mailer needs.
    pub fn seal_notice(&self, subject: Uuid, text: &str) -> Vec<u8> {
        seal_bytes(
            &self.kek,
            &associated(subject, "erasure notice"),
            text.as_bytes(),
        )
    }

    pub fn open_notice(&self, subject: Uuid, sealed: &[u8]) -> Option<String> {
        let plain = open_bytes(&self.kek, &associated(subject, "erasure notice"), sealed)?;
        String::from_utf8(plain).ok()
    }

    /// The data key of `subject` if this process holds it.
    pub fn cached_key(&self, subject: Uuid) -> Option<DataKey> {
        self.cache.lock().ok()?.get(&subject).cloned()
    }

    /// Holds `subject`'s stored data key for the next writes.
    pub fn remember_key(&self, subject: Uuid, key: &DataKey) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(subject, key.clone());
        }
    }

    /// Forgets a subject's key in this process (its account was deleted).
    pub fn forget(&self, subject: Uuid) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(&subject);
        }
    }

    /// Seals the personal data of one event in place and names its subject in the metadata.
    /// Values sealed already stay as they are (so sealing twice changes nothing).
    pub fn seal_event(
        &self,
        key: &DataKey,
        subject: Uuid,
        payload: &mut Value,
        metadata: &mut Value,
    ) {
        walk(payload, metadata, |field, value| {
            if !is_sealed(value) {
                *value = key.seal(subject, field, value);
            }
            true
        });
        if let Some(meta) = metadata.as_object_mut() {
            meta.insert(SUBJECT.to_owned(), Value::String(subject.to_string()));
        }
    }

    /// Opens the sealed values of one event in place with the subject's wrapped key as fetched
    /// with it (`None`: destroyed). What cannot be opened reads as erased: `""` in the payload,
    /// absent in the metadata.
    pub fn open_event(&self, wrapped: Option<&[u8]>, payload: &mut Value, metadata: &mut Value) {
        let Some(subject) = subject_in(metadata) else {
            return;
        };
        let key = wrapped.and_then(|w| self.unwrap_key(subject, w));
        open_with(key.as_ref(), subject, payload, metadata);
    }

    /// Unwraps the stored keys of a batch's subjects, once each (the rows of `user_data_key`).
    pub fn unwrap_all(&self, rows: Vec<(Uuid, Option<Vec<u8>>)>) -> HashMap<Uuid, DataKey> {
        rows.into_iter()
            .filter_map(|(subject, wrapped)| Some((subject, self.unwrap_key(subject, &wrapped?)?)))
            .collect()
    }
}

/// Opens the sealed values of one event of `subject` in place with `key` (`None`: destroyed).
pub fn open_with(key: Option<&DataKey>, subject: Uuid, payload: &mut Value, metadata: &mut Value) {
    walk(payload, metadata, |field, value| {
        if !is_sealed(value) {
            return true;
        }
        match key.and_then(|k| k.open(subject, field, value)) {
            Some(plain) => {
                *value = plain;
                true
            }
            None => {
                value.clear();
                false
            }
        }
    });
}

/// The subject named in an event's metadata.
pub fn subject_in(metadata: &Value) -> Option<Uuid> {
    metadata.get(SUBJECT)?.as_str()?.parse().ok()
}

/// Whose personal data an event holds: the account of a `User` event, the `user_id` of others.
pub fn subject_of(aggregate_type: &str, aggregate_id: &str, payload: &Value) -> Option<Uuid> {
    if aggregate_type == "User" {
        return aggregate_id.parse().ok();
    }
    body(payload)?.get("user_id")?.as_str()?.parse().ok()
}

/// The event's own fields (cqrs-es stores an enum as `{"<EventType>": {...}}`).
fn body(payload: &Value) -> Option<&Map<String, Value>> {
    let outer = payload.as_object()?;
    if outer.len() != 1 {
        return None;
    }
    outer.values().next()?.as_object()
}

/// Calls `visit(field, value)` on every personal string of an event; a metadata entry whose
/// visit answers `false` is removed.
fn walk(
    payload: &mut Value,
    metadata: &mut Value,
    mut visit: impl FnMut(&str, &mut String) -> bool,
) {
    if let Some(body) = payload
        .as_object_mut()
        .filter(|outer| outer.len() == 1)
        .and_then(|outer| outer.values_mut().next())
        .and_then(Value::as_object_mut)
    {
        for (name, value) in body.iter_mut() {
            if PERSONAL_FIELDS.contains(&name.as_str()) {
                if let Value::String(text) = value {
                    visit(name, text);
                }
            } else if name == PERSONAL_OBJECT {
                if let Some(inner) = value.as_object_mut() {
                    for (field, value) in inner.iter_mut() {
                        if let Value::String(text) = value {
                            visit(field, text);
                        }
                    }
                }
            }
        }
    }
    if let Some(meta) = metadata.as_object_mut() {
        for name in PERSONAL_METADATA {
            let keep = match meta.get_mut(*name) {
                Some(Value::String(text)) => visit(name, text),
                _ => true,
            };
            if !keep {
                meta.remove(*name);
            }
        }
    }
}

/// Whether an event holds any sealed value (in its payload, and in `metadata` unless that is
/// null).
pub fn holds_sealed_data(payload: &Value, metadata: &Value) -> bool {
    let sealed = |v: &Value| v.as_str().is_some_and(is_sealed);
    let in_body = body(payload).is_some_and(|body| {
        body.iter().any(|(name, value)| {
            (PERSONAL_FIELDS.contains(&name.as_str()) && sealed(value))
                || (name == PERSONAL_OBJECT
                    && value
                        .as_object()
                        .is_some_and(|inner| inner.values().any(sealed)))
        })
    });
    in_body
        || PERSONAL_METADATA
            .iter()
            .any(|name| metadata.get(*name).is_some_and(sealed))
}

/// Whether an event still holds personal data in clear (what `accounts erasure migrate` seals).
pub fn holds_clear_personal_data(payload: &Value, metadata: &Value) -> bool {
    let mut payload = payload.clone();
    let mut metadata = metadata.clone();
    let mut clear = false;
    walk(&mut payload, &mut metadata, |_, value| {
        clear |= !value.is_empty() && !is_sealed(value);
        true
    });
    clear
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> (Value, Value) {
        (
            json!({"Registered": {"user_id": "x", "email": "ann@example.com", "username": "ann",
                                  "email_key": "ann@example.com", "username_key": "ann",
                                  "registered_at": "2026-01-01T00:00:00Z"}}),
            json!({"ip": "203.0.113.9", "user_agent": "curl/8", "request_id": "r1"}),
        )
    }

    #[test]
    fn sealed_events_open_with_their_key_and_read_as_erased_without_it() {
        let vault = Vault::new([7; 32]);
        let subject = Uuid::new_v4();
        let (key, wrapped) = vault.new_data_key(subject);
        let (mut payload, mut metadata) = event();
        let (clear_payload, clear_metadata) = event();
        assert!(holds_clear_personal_data(&payload, &metadata));
        vault.seal_event(&key, subject, &mut payload, &mut metadata);
        let text = format!("{payload}{metadata}");
        for secret in ["ann@example.com", "\"ann\"", "203.0.113.9", "curl/8"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(!holds_clear_personal_data(&payload, &metadata));
        assert_eq!(metadata["request_id"], "r1");
        assert_eq!(
            payload["Registered"]["registered_at"],
            "2026-01-01T00:00:00Z"
        );

        let (mut opened, mut opened_meta) = (payload.clone(), metadata.clone());
        vault.open_event(Some(&wrapped), &mut opened, &mut opened_meta);
        assert_eq!(opened, clear_payload);
        opened_meta.as_object_mut().unwrap().remove(SUBJECT);
        assert_eq!(opened_meta, clear_metadata);

        // The key destroyed: nothing opens; the shape stays.
        let (mut erased, mut erased_meta) = (payload.clone(), metadata.clone());
        vault.open_event(None, &mut erased, &mut erased_meta);
        assert_eq!(erased["Registered"]["email"], "");
        assert_eq!(erased["Registered"]["username"], "");
        assert!(erased_meta.get("ip").is_none() && erased_meta.get("user_agent").is_none());

        // Another person's key, or another key-encryption key, opens nothing either.
        let (_, other) = vault.new_data_key(Uuid::new_v4());
        let (mut wrong, mut wrong_meta) = (payload.clone(), metadata.clone());
        vault.open_event(Some(&other), &mut wrong, &mut wrong_meta);
        assert_eq!(wrong["Registered"]["email"], "");
        let stranger = Vault::new([8; 32]);
        let (mut wrong, mut wrong_meta) = (payload, metadata);
        stranger.open_event(Some(&wrapped), &mut wrong, &mut wrong_meta);
        assert_eq!(wrong["Registered"]["email"], "");
    }

    #[test]
    fn a_sealed_value_cannot_be_moved_to_another_field_or_person() {
        let vault = Vault::new([1; 32]);
        let subject = Uuid::new_v4();
        let (key, _) = vault.new_data_key(subject);
        let sealed = key.seal(subject, "email", "ann@example.com");
        assert_eq!(
            key.open(subject, "email", &sealed).as_deref(),
            Some("ann@example.com")
        );
        assert_eq!(key.open(subject, "username", &sealed), None);
        assert_eq!(key.open(Uuid::new_v4(), "email", &sealed), None);
    }

    #[test]
    fn profile_texts_are_sealed_and_identity_hashes_are_stable_and_keyed() {
        let vault = Vault::new([2; 32]);
        let subject = Uuid::new_v4();
        let (key, wrapped) = vault.new_data_key(subject);
        let mut payload = json!({"ProfileUpdated": {"changes": {"bio": "I live in Graz"},
                                                    "updated_at": "2026-01-01T00:00:00Z"}});
        let mut metadata = json!({});
        vault.seal_event(&key, subject, &mut payload, &mut metadata);
        assert!(!payload.to_string().contains("Graz"));
        vault.open_event(Some(&wrapped), &mut payload, &mut metadata);
        assert_eq!(
            payload["ProfileUpdated"]["changes"]["bio"],
            "I live in Graz"
        );

        let hash = vault.identity_hash("email", "ann@example.com");
        assert_eq!(hash, vault.identity_hash("email", "ann@example.com"));
        assert_ne!(hash, vault.identity_hash("username", "ann@example.com"));
        assert_ne!(
            hash,
            Vault::new([3; 32]).identity_hash("email", "ann@example.com")
        );
        assert!(!hash.contains("ann"));
    }
}
