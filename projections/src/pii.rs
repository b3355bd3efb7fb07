//! Crypto-shredding: every piece of personal data in an event is stored encrypted under a data
//! key of its own person (the event's *subject*), and destroying that key erases the person from
//! every copy of the events at once: the event store, the JetStream stream, the backups.
//!
//! - A **data key** is 32 random bytes per person, held in `user_data_key` wrapped (sealed) under
//!   the key-encryption key (`DATA_KEY_FILE`), so a copy of the database alone opens nothing.
//! - A **sealed value** is a JSON string `pii:v2:<base64url(nonce ‖ ciphertext ‖ tag)>`,
//!   AES-256-GCM-SIV (a 12-byte random nonce; misuse-resistant) under a key derived from the
//!   person's data key, with the subject's id and the field's name as associated data (a value
//!   cannot be moved to another person or field). Events keep their shape: a string stays a
//!   string. Values sealed by earlier versions, `pii:v1:` (XChaCha20-Poly1305 under the data key
//!   itself), still open; nothing writes them any more. v2 replaced v1 for speed: opening a short
//!   value takes a quarter of the time with AES-NI, and every rebuild opens every value.
//! - What is sealed: in the payload, the fields in [`PERSONAL_FIELDS`] and every string of a
//!   `changes` object (profile texts); in the metadata, [`PERSONAL_METADATA`] (IP address, user
//!   agent). The subject's id is written to the metadata as `subject`.
//! - **Opening** needs the wrapped key, which readers fetch for a batch of events at once
//!   ([`crate::reader::open_all`]; the event repository with each stream it loads). Without it
//!   (the person was deleted) a sealed string opens as `""` and sealed metadata as absent: what a
//!   read model then builds is the same anonymous row deletion leaves. Read models open only what
//!   they read ([`crate::reader::Opens`]).
//! - Identities (e-mail, username) are unique under a keyed hash ([`Vault::identity_hash`]), so
//!   the look-up table holds no address either.

use aes_gcm_siv::aead::AeadInPlace;
use aes_gcm_siv::Aes256GcmSiv;
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

/// The prefix of a value sealed now (AES-256-GCM-SIV).
pub const SEALED: &str = "pii:v2:";
/// The prefix of a value sealed before v2 (XChaCha20-Poly1305): opened, never written.
pub const SEALED_V1: &str = "pii:v1:";
/// Payload fields that hold personal data (at the event's top level).
pub const PERSONAL_FIELDS: &[&str] = &["email", "username", "email_key", "username_key"];
/// Of those, the canonical forms of the e-mail and username: only the aggregate reads them (to
/// claim the identity), so read models leave them sealed.
pub const CANONICAL_FIELDS: &[&str] = &["email_key", "username_key"];
/// A payload object whose every string is personal (the profile texts of `ProfileUpdated`).
pub const PERSONAL_OBJECT: &str = "changes";
/// Metadata entries that hold personal data.
pub const PERSONAL_METADATA: &[&str] = &["ip", "user_agent"];
/// The metadata entry naming whose data key seals the event.
pub const SUBJECT: &str = "subject";

const NONCE: usize = 24;
const NONCE_V2: usize = 12;
const TAG: usize = 16;
/// The first byte of a data key wrapped in the v2 format (`2 ‖ nonce ‖ ciphertext ‖ tag`, 61
/// bytes, AES-256-GCM-SIV); v1 wrapped keys are `nonce ‖ ciphertext ‖ tag` (72 bytes,
/// XChaCha20-Poly1305).
const WRAPPED_V2: u8 = 2;
const WRAPPED_V2_LEN: usize = 1 + NONCE_V2 + 32 + TAG;
/// Data keys kept unwrapped in memory for writing (never used to open: a reader always fetches
/// the key with the events, so a destroyed key opens nothing anywhere).
const CACHE: usize = 4096;

/// One person's data key, unwrapped: the key itself (what opens values sealed in v1) and the
/// AES-256-GCM-SIV key derived from it (what seals now). The cipher is set up per value (its key
/// schedule takes tens of nanoseconds), so that a rebuild holding every person's key holds 64
/// bytes each, not a kilobyte of key schedules.
#[derive(Clone)]
pub struct DataKey(Arc<DataKeyInner>);

struct DataKeyInner {
    raw: [u8; 32],
    v2: [u8; 32],
}

impl DataKey {
    fn from_raw(raw: [u8; 32]) -> Self {
        let v2 = derive(&raw, b"accounts pii v2 AES-256-GCM-SIV");
        Self(Arc::new(DataKeyInner { raw, v2 }))
    }

    fn v2(&self) -> Aes256GcmSiv {
        Aes256GcmSiv::new((&self.0.v2).into())
    }

    fn seal(&self, subject: Uuid, field: &str, plain: &str) -> String {
        let sealed = with_associated(subject, field, |aad| {
            seal_v2(&self.v2(), aad, plain.as_bytes())
        });
        format!("{SEALED}{}", URL_SAFE_NO_PAD.encode(sealed))
    }

    fn open(&self, subject: Uuid, field: &str, sealed: &str) -> Option<String> {
        if let Some(encoded) = sealed.strip_prefix(SEALED) {
            let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
            let plain = with_associated(subject, field, |aad| open_v2(&self.v2(), aad, bytes))?;
            return String::from_utf8(plain).ok();
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed.strip_prefix(SEALED_V1)?)
            .ok()?;
        let v1 = XChaCha20Poly1305::new((&self.0.raw).into());
        String::from_utf8(open_bytes(&v1, &associated(subject, field), &bytes)?).ok()
    }
}

/// HMAC-SHA-256 of `label` under `key`: a key of its own for each use of one secret.
fn derive(key: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        // HMAC takes keys of any length.
        unreachable!()
    };
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// `nonce ‖ ciphertext ‖ tag` of `msg` under `cipher` (AES-256-GCM-SIV) with a random 12-byte
/// nonce and `aad` bound to it.
fn seal_v2(cipher: &Aes256GcmSiv, aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut sealed = Vec::with_capacity(NONCE_V2 + msg.len() + TAG);
    let mut nonce = [0u8; NONCE_V2];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(msg);
    // Encryption with a valid key and nonce cannot fail (it would for messages of gigabytes).
    let tag = cipher
        .encrypt_in_place_detached((&nonce).into(), aad, &mut sealed[NONCE_V2..])
        .unwrap_or_default();
    sealed.extend_from_slice(&tag);
    sealed
}

/// What [`seal_v2`] sealed under `cipher` and `aad`, opened in the buffer it came in; `None`
/// for anything else.
fn open_v2(cipher: &Aes256GcmSiv, aad: &[u8], mut sealed: Vec<u8>) -> Option<Vec<u8>> {
    let length = sealed.len().checked_sub(NONCE_V2 + TAG)?;
    let (nonce, rest) = sealed.split_at_mut(NONCE_V2);
    let (body, tag) = rest.split_at_mut(length);
    cipher
        .decrypt_in_place_detached((&*nonce).into(), aad, body, (&*tag).into())
        .ok()?;
    sealed.copy_within(NONCE_V2..NONCE_V2 + length, 0);
    sealed.truncate(length);
    Some(sealed)
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

/// Calls `f` with [`associated`]`(subject, field)`, built on the stack for the short field names
/// events have (opening runs once per personal value of every event a rebuild reads).
fn with_associated<T>(subject: Uuid, field: &str, f: impl FnOnce(&[u8]) -> T) -> T {
    let mut buffer = [0u8; 80];
    let length = 16 + field.len();
    if length > buffer.len() {
        return f(&associated(subject, field));
    }
    buffer[..16].copy_from_slice(subject.as_bytes());
    buffer[16..length].copy_from_slice(field.as_bytes());
    f(&buffer[..length])
}

/// Whether a JSON string is a sealed value (of any version).
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED) || value.starts_with(SEALED_V1)
}

/// The key-encryption key and what is derived from it.
#[derive(Clone)]
pub struct Vault {
    kek: Arc<XChaCha20Poly1305>,
    /// What wraps data keys now (v2), derived from the key-encryption key.
    wrap: Arc<Aes256GcmSiv>,
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
        let identity = derive(&kek, b"accounts identity hash v1");
        let wrap = derive(&kek, b"accounts data key wrap v2 AES-256-GCM-SIV");
        Self {
            kek: Arc::new(XChaCha20Poly1305::new((&kek).into())),
            wrap: Arc::new(Aes256GcmSiv::new(&wrap.into())),
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
        let mut raw = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
        let mut wrapped = vec![WRAPPED_V2];
        wrapped.extend(seal_v2(&self.wrap, subject.as_bytes(), &raw));
        (DataKey::from_raw(raw), wrapped)
    }

    /// Unwraps a stored data key, wrapped in v2 or v1 (`None` if it is not one of this
    /// key-encryption key's).
    pub fn unwrap_key(&self, subject: Uuid, wrapped: &[u8]) -> Option<DataKey> {
        let raw = match wrapped.split_first() {
            Some((&WRAPPED_V2, sealed)) if wrapped.len() == WRAPPED_V2_LEN => {
                open_v2(&self.wrap, subject.as_bytes(), sealed.to_vec())?
            }
            _ => open_bytes(&self.kek, subject.as_bytes(), wrapped)?,
        };
        Some(DataKey::from_raw(raw.try_into().ok()?))
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
        derive(&self.identity, b"accounts key-encryption key check v1").to_vec()
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

    /// Seals the personal data of one event in place and names its subject in the metadata. The
    /// values must be in clear (as the aggregate made them, or as written before sealing).
    pub fn seal_event(
        &self,
        key: &DataKey,
        subject: Uuid,
        payload: &mut Value,
        metadata: &mut Value,
    ) {
        // Every personal value, whatever it looks like: a profile text a person typed as
        // `pii:v2:...` is theirs to keep private too (and reads back as typed).
        walk(payload, metadata, |field, value| {
            *value = key.seal(subject, field, value);
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
    open_fields(key, subject, payload, metadata, |_| true);
}

/// [`open_with`] for a read model: the canonical forms ([`CANONICAL_FIELDS`]) stay sealed.
pub fn open_for_reading(
    key: Option<&DataKey>,
    subject: Uuid,
    payload: &mut Value,
    metadata: &mut Value,
) {
    open_fields(key, subject, payload, metadata, |field| {
        !CANONICAL_FIELDS.contains(&field)
    });
}

fn open_fields(
    key: Option<&DataKey>,
    subject: Uuid,
    payload: &mut Value,
    metadata: &mut Value,
    wanted: impl Fn(&str) -> bool,
) {
    walk(payload, metadata, |field, value| {
        if !is_sealed(value) || !wanted(field) {
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

    #[test]
    fn values_and_keys_of_the_v1_format_still_open() {
        // What an earlier version wrote: the data key wrapped with XChaCha20-Poly1305 under the
        // key-encryption key, values sealed with XChaCha20-Poly1305 under the data key itself.
        let kek = [5; 32];
        let vault = Vault::new(kek);
        let subject = Uuid::new_v4();
        let raw = [9u8; 32];
        let wrapped_v1 = seal_bytes(
            &XChaCha20Poly1305::new((&kek).into()),
            subject.as_bytes(),
            &raw,
        );
        assert_eq!(wrapped_v1.len(), 72);
        let sealed_v1 = format!(
            "{SEALED_V1}{}",
            URL_SAFE_NO_PAD.encode(seal_bytes(
                &XChaCha20Poly1305::new((&raw).into()),
                &associated(subject, "email"),
                b"ann@example.com",
            ))
        );
        let mut payload = json!({"Registered": {"email": sealed_v1, "username": "x"}});
        let mut metadata = json!({"subject": subject.to_string()});
        vault.open_event(Some(&wrapped_v1), &mut payload, &mut metadata);
        assert_eq!(payload["Registered"]["email"], "ann@example.com");

        // What is written now under that same key is v2, and opens too.
        let key = vault.unwrap_key(subject, &wrapped_v1).unwrap();
        let sealed = key.seal(subject, "email", "ann@example.com");
        assert!(sealed.starts_with("pii:v2:"));
        assert_eq!(
            key.open(subject, "email", &sealed).as_deref(),
            Some("ann@example.com")
        );
        // A new key is wrapped in v2; a v1 value does not open under another person's key.
        let (_, wrapped) = vault.new_data_key(subject);
        assert_eq!((wrapped.len(), wrapped[0]), (WRAPPED_V2_LEN, WRAPPED_V2));
        let other = vault.new_data_key(Uuid::new_v4()).0;
        assert_eq!(other.open(subject, "email", &sealed_v1), None);
    }

    #[test]
    fn a_text_typed_like_a_sealed_value_is_sealed_and_reads_back_as_typed() {
        let vault = Vault::new([4; 32]);
        let subject = Uuid::new_v4();
        let (key, wrapped) = vault.new_data_key(subject);
        let typed = "pii:v2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA my secret";
        let mut payload = json!({"ProfileUpdated": {"changes": {"bio": typed}}});
        let mut metadata = json!({"ip": "pii:v1:198.51.100.7"});
        vault.seal_event(&key, subject, &mut payload, &mut metadata);
        assert!(!payload.to_string().contains("my secret"));
        assert!(!metadata.to_string().contains("198.51.100.7"));
        vault.open_event(Some(&wrapped), &mut payload, &mut metadata);
        assert_eq!(payload["ProfileUpdated"]["changes"]["bio"], typed);
        assert_eq!(metadata["ip"], "pii:v1:198.51.100.7");
    }

    #[test]
    fn read_models_leave_the_canonical_keys_sealed() {
        let vault = Vault::new([6; 32]);
        let subject = Uuid::new_v4();
        let (key, _) = vault.new_data_key(subject);
        let (mut payload, mut metadata) = event();
        vault.seal_event(&key, subject, &mut payload, &mut metadata);
        open_for_reading(Some(&key), subject, &mut payload, &mut metadata);
        assert_eq!(payload["Registered"]["email"], "ann@example.com");
        assert_eq!(payload["Registered"]["username"], "ann");
        assert_eq!(metadata["ip"], "203.0.113.9");
        for canonical in CANONICAL_FIELDS {
            let value = payload["Registered"][canonical].as_str().unwrap();
            assert!(value.starts_with(SEALED), "{canonical}: {value}");
        }
    }
}
