//! Proves the test environment is real: a CRD served by the real
//! kube-apiserver and watchable from `kube::Client`; Keystone issuing tokens;
//! Glance deleting with 204, then 404, and refusing a missing token with 401.

mod common;

use std::time::Duration;

use futures::StreamExt;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use reqwest::StatusCode;

use cloudimage_operator::crd::CloudImage;
use common::glance::{Glance, token};
use common::{Scope, spec};

#[tokio::test]
async fn crd_is_served_and_watchable() {
    let s = Scope::new("env-crd").await;
    let api: Api<CloudImage> = s.cimgs();
    let mut events = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    s.create(
        "watched",
        spec("4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90", "creds", "c"),
    )
    .await
    .expect("create");
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = events.next().await {
            if let Ok(obj) = ev
                && obj.name_any() == "watched"
            {
                return obj;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("the watch delivers the object within 30 s");
    assert_eq!(seen.spec.image_id, "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90");
    assert_eq!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn keystone_and_glance_answer_for_real() {
    let env = common::TestEnv::load();
    let (status, tok) = token(&env, "demo", &env.password("demo")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(tok.is_some_and(|t| t.len() > 20), "a real Fernet token");
    let (bad, _) = token(&env, "demo", "not-the-password").await;
    assert_eq!(bad, StatusCode::UNAUTHORIZED);

    let g = Glance::as_user(&env, "demo").await;
    let id = g.create_image("env-proof", "private").await;
    assert_eq!(g.status_of(&id).await, StatusCode::OK);
    assert_eq!(
        g.delete_raw(&id, None).await,
        StatusCode::UNAUTHORIZED,
        "no token: 401"
    );
    assert_eq!(
        g.delete_raw(&id, Some("garbage-token")).await,
        StatusCode::UNAUTHORIZED,
        "bad token: 401"
    );
    assert_eq!(
        g.delete_raw(&id, Some(&g.token)).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        g.delete_raw(&id, Some(&g.token)).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(g.status_of(&id).await, StatusCode::NOT_FOUND);
}
