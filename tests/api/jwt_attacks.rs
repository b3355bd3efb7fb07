//! The JWT attack suite: every forged, tampered or misused token is a 401.

use crate::helpers::*;
use accounts::auth::keyring::StoredRing;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let header =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    let claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap()).unwrap();
    (header, claims)
}

#[tokio::test]
async fn forged_tampered_and_misused_tokens_are_all_refused() {
    let app = TestApp::spawn().await;
    let (access, refresh) = app.active_user("mallory", "mallory@example.com").await;
    json_of(
        app.get_authed("/accounts/api/get/profile/", &access).await,
        StatusCode::OK,
    )
    .await;
    let (header, claims) = parts(&access);
    let kid = header["kid"].as_str().unwrap().to_owned();
    let ring = StoredRing::read(&app.settings.keyring_file())
        .unwrap()
        .unwrap();
    let ours = EncodingKey::from_ed_pem(ring.keys[0].pem.as_bytes()).unwrap();
    let sign = |claims: &Value| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, claims, &ours).unwrap()
    };
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        change(&mut c);
        sign(&c)
    };
    let now = chrono::Utc::now().timestamp();
    // A control: a token we craft with our key and untouched claims is accepted.
    json_of(
        app.get_authed("/accounts/api/get/profile/", &with(&|_| {}))
            .await,
        StatusCode::OK,
    )
    .await;

    let mut attacks: Vec<(String, String)> = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let forged = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "typ": "JWT", "kid": kid})),
            b64(&claims)
        );
        attacks.push((format!("alg {alg}"), forged.clone()));
        attacks.push((
            format!("alg {alg} without signature part"),
            forged.trim_end_matches('.').to_owned(),
        ));
    }
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
    for secret in [x.as_bytes().to_vec(), URL_SAFE_NO_PAD.decode(&x).unwrap()] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.clone());
        let forged =
            jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(&secret).unwrap()).unwrap();
        attacks.push(("HS256 with our public key".into(), forged));
    }
    let (h, p, _) = {
        let mut it = access.split('.');
        (
            it.next().unwrap().to_owned(),
            it.next().unwrap().to_owned(),
            it.next().unwrap().to_owned(),
        )
    };
    attacks.push(("empty signature".into(), format!("{h}.{p}.")));
    attacks.push(("stripped signature".into(), format!("{h}.{p}")));
    let mut tampered = claims.clone();
    tampered["sub"] = json!(uuid::Uuid::new_v4());
    attacks.push((
        "tampered payload".into(),
        format!(
            "{h}.{}.{}",
            b64(&tampered),
            access.split('.').nth(2).unwrap()
        ),
    ));

    let other =
        accounts::auth::keyring::StoredKey::generate(chrono::Utc::now(), chrono::Utc::now())
            .unwrap();
    let other_key = EncodingKey::from_ed_pem(other.pem.as_bytes()).unwrap();
    for other_kid in [Some("unknown-kid".to_owned()), Some(kid.clone()), None] {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = other_kid.clone();
        attacks.push((
            format!("foreign key, kid {other_kid:?}"),
            jsonwebtoken::encode(&h, &claims, &other_key).unwrap(),
        ));
    }
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = None;
    attacks.push((
        "our key without kid".into(),
        jsonwebtoken::encode(&h, &claims, &ours).unwrap(),
    ));

    attacks.push((
        "expired".into(),
        with(&|c| {
            c["exp"] = json!(now - 60);
            c["iat"] = json!(now - 1000);
            c["nbf"] = json!(now - 1000);
        }),
    ));
    attacks.push((
        "nbf in the future".into(),
        with(&|c| c["nbf"] = json!(now + 600)),
    ));
    attacks.push((
        "wrong iss".into(),
        with(&|c| c["iss"] = json!("someone-else")),
    ));
    attacks.push((
        "wrong aud".into(),
        with(&|c| c["aud"] = json!("another-api")),
    ));
    attacks.push((
        "missing aud".into(),
        with(&|c| {
            c.as_object_mut().unwrap().remove("aud");
        }),
    ));
    attacks.push((
        "missing exp".into(),
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
    ));
    attacks.push((
        "refresh token_type".into(),
        with(&|c| c["token_type"] = json!("refresh")),
    ));
    attacks.push((
        "missing token_type".into(),
        with(&|c| {
            c.as_object_mut().unwrap().remove("token_type");
        }),
    ));
    attacks.push(("a refresh token".into(), refresh.clone()));
    let link = app
        .smtp
        .wait_for("mallory@example.com", "Activate")
        .await
        .link();
    attacks.push(("a link token".into(), link_parts(&link).1));
    attacks.push((
        "100 KiB token".into(),
        with(&|c| c["pad"] = json!("a".repeat(100 * 1024))),
    ));

    for (name, token) in attacks {
        let response = app.get_authed("/accounts/api/get/profile/", &token).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{name} was accepted"
        );
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(body["code"], "token_not_valid", "{name}: {body}");
    }
}

#[tokio::test]
async fn key_rotation_publishes_first_signs_later_and_keeps_old_tokens_valid() {
    let app = TestApp::spawn().await;
    let (old_access, _) = app.active_user("rotor", "rotor@example.com").await;
    let jwks = |app: &TestApp| {
        let url = app.url("/.well-known/jwks.json");
        let client = app.client.clone();
        async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let old_kid = parts(&old_access).0["kid"].as_str().unwrap().to_owned();

    let mut settings = app.settings.clone();
    settings.key_rotation_delay = 3600;
    accounts::startup::rotate_keys(&settings).unwrap();
    app.keys_reload();
    let published = jwks(&app).await;
    assert_eq!(
        published["keys"].as_array().unwrap().len(),
        2,
        "the new key is published at once"
    );
    let login = json_of(
        app.login("rotor@example.com", PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    let before_switch = login["access_token"].as_str().unwrap();
    assert_eq!(
        parts(before_switch).0["kid"],
        old_kid,
        "the old key signs until the switch"
    );

    settings.key_rotation_delay = 0;
    accounts::startup::rotate_keys(&settings).unwrap();
    app.keys_reload();
    let login = json_of(
        app.login("rotor@example.com", PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    let new_access = login["access_token"].as_str().unwrap();
    assert_ne!(parts(new_access).0["kid"], old_kid);
    for token in [old_access.as_str(), before_switch, new_access] {
        json_of(
            app.get_authed("/accounts/api/get/profile/", token).await,
            StatusCode::OK,
        )
        .await;
    }
    let kids: Vec<Value> = jwks(&app).await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].clone())
        .collect();
    assert!(
        kids.contains(&json!(old_kid)),
        "the old key stays published while its tokens live"
    );
}
