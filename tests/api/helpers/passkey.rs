//! A software passkey for the tests, written against the WebAuthn spec: a P-256 key, `none`
//! attestation, user presence and verification, and a user handle (a discoverable credential).
//! It answers the options the service gives as a browser passes them to an authenticator, for
//! an origin the test chooses.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ciborium::value::Value as Cbor;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use rand::RngCore;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub struct SoftPasskey {
    key: SigningKey,
    pub credential_id: Vec<u8>,
    /// The user id the relying party gave at registration (sent back at each login).
    pub user_handle: Vec<u8>,
    counter: u32,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn cbor(value: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

impl SoftPasskey {
    pub fn new() -> Self {
        let mut credential_id = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut credential_id);
        Self {
            key: SigningKey::random(&mut rand::rngs::OsRng),
            credential_id,
            user_handle: Vec::new(),
            counter: 0,
        }
    }

    fn client_data(kind: &str, options: &Value, origin: &str) -> String {
        json!({
            "type": kind,
            "challenge": options["publicKey"]["challenge"],
            "origin": origin,
            "crossOrigin": false,
        })
        .to_string()
    }

    /// What `navigator.credentials.create({publicKey})` answers on a page of `origin`.
    pub fn register(&mut self, options: &Value, origin: &str) -> Value {
        let public_key = &options["publicKey"];
        let rp_id = public_key["rp"]["id"].as_str().unwrap();
        self.user_handle = URL_SAFE_NO_PAD
            .decode(public_key["user"]["id"].as_str().unwrap())
            .unwrap();
        let client_data = Self::client_data("webauthn.create", options, origin);
        let point = self.key.verifying_key().to_encoded_point(false);
        let cose_key = Cbor::Map(vec![
            (Cbor::Integer(1.into()), Cbor::Integer(2.into())),
            (Cbor::Integer(3.into()), Cbor::Integer((-7).into())),
            (Cbor::Integer((-1).into()), Cbor::Integer(1.into())),
            (
                Cbor::Integer((-2).into()),
                Cbor::Bytes(point.x().unwrap().to_vec()),
            ),
            (
                Cbor::Integer((-3).into()),
                Cbor::Bytes(point.y().unwrap().to_vec()),
            ),
        ]);
        let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
        auth_data.push(0x45); // user present, user verified, attested credential data
        auth_data.extend(self.counter.to_be_bytes());
        auth_data.extend([0u8; 16]); // AAGUID
        auth_data.extend((self.credential_id.len() as u16).to_be_bytes());
        auth_data.extend(&self.credential_id);
        auth_data.extend(cbor(&cose_key));
        let attestation = Cbor::Map(vec![
            (Cbor::Text("fmt".into()), Cbor::Text("none".into())),
            (Cbor::Text("attStmt".into()), Cbor::Map(vec![])),
            (Cbor::Text("authData".into()), Cbor::Bytes(auth_data)),
        ]);
        json!({
            "id": b64(&self.credential_id),
            "rawId": b64(&self.credential_id),
            "type": "public-key",
            "response": {
                "attestationObject": b64(&cbor(&attestation)),
                "clientDataJSON": b64(client_data.as_bytes()),
            },
            "extensions": {},
        })
    }

    /// What `navigator.credentials.get({publicKey})` answers on a page of `origin`.
    pub fn authenticate(&mut self, options: &Value, origin: &str) -> Value {
        let rp_id = options["publicKey"]["rpId"].as_str().unwrap();
        self.counter += 1;
        let client_data = Self::client_data("webauthn.get", options, origin);
        let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
        auth_data.push(0x05); // user present, user verified
        auth_data.extend(self.counter.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend(Sha256::digest(client_data.as_bytes()));
        let signature: Signature = self.key.sign(&signed);
        json!({
            "id": b64(&self.credential_id),
            "rawId": b64(&self.credential_id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(&auth_data),
                "clientDataJSON": b64(client_data.as_bytes()),
                "signature": b64(signature.to_der().as_bytes()),
                "userHandle": b64(&self.user_handle),
            },
            "extensions": {},
        })
    }
}
