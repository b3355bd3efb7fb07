//! Uniqueness under concurrent registrations: decided in the append transaction.

use crate::helpers::*;
use futures::future::join_all;
use serde_json::Value;

#[tokio::test]
async fn twenty_concurrent_registrations_of_one_email_make_one_account_and_twenty_identical_201s() {
    let app = TestApp::spawn().await;
    let responses = join_all((0..20).map(|i| {
        let app = &app;
        async move {
            let response = app
                .register("frank", "frank@example.com", &format!("{PASSWORD} {i}"))
                .await;
            (response.status(), response.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let (first_status, first_body) = &responses[0];
    assert_eq!(*first_status, 201);
    for (status, body) in &responses {
        assert_eq!((status, body), (first_status, first_body));
    }
    assert_eq!(app.count_events("Registered").await, 1);
    let accounts: i64 = sqlx::query_scalar(
        "select count(distinct user_id) from user_identities where kind = 'email'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(accounts, 1);
}

#[tokio::test]
async fn twenty_concurrent_registrations_of_one_username_make_one_account_and_nineteen_400s() {
    let app = TestApp::spawn().await;
    let statuses = join_all((0..20).map(|i| {
        let app = &app;
        async move {
            app.register("grace", &format!("grace{i}@example.com"), PASSWORD)
                .await
                .status()
        }
    }))
    .await;
    assert_eq!(statuses.iter().filter(|s| s.as_u16() == 201).count(), 1);
    assert_eq!(statuses.iter().filter(|s| s.as_u16() == 400).count(), 19);
    assert_eq!(app.count_events("Registered").await, 1);
}
