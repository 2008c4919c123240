//! The tests' own client for the real Keystone and Glance: independent of
//! the operator's code, so what the tests see is what the cloud says.

use reqwest::StatusCode;
use serde_json::json;

use super::TestEnv;

pub struct Glance {
    pub url: String,
    pub token: String,
    http: reqwest::Client,
}

/// A project-scoped token for `user` (its project has the same name).
pub async fn token(env: &TestEnv, user: &str, password: &str) -> (StatusCode, Option<String>) {
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": user, "domain": {"name": "Default"}}}
    }});
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/auth/tokens",
            env.keystone_url().trim_end_matches('/')
        ))
        .json(&body)
        .send()
        .await
        .expect("Keystone answers");
    let status = resp.status();
    let tok = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, tok)
}

impl Glance {
    pub async fn as_user(env: &TestEnv, user: &str) -> Glance {
        let (status, tok) = token(env, user, &env.password(user)).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "Keystone issues a token for {user}"
        );
        Glance {
            url: env.glance_url().trim_end_matches('/').to_owned(),
            token: tok.expect("X-Subject-Token"),
            http: reqwest::Client::new(),
        }
    }

    fn image(&self, id: &str) -> String {
        format!("{}/v2/images/{id}", self.url)
    }

    /// Creates an active image with a fresh id (and uploads a few bytes).
    pub async fn create_image(&self, name: &str, visibility: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let resp = self
            .http
            .post(format!("{}/v2/images", self.url))
            .header("X-Auth-Token", &self.token)
            .json(&json!({"id": id, "name": name, "disk_format": "raw", "container_format": "bare", "visibility": visibility}))
            .send()
            .await
            .expect("Glance answers");
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "create image: {:?}",
            resp.text().await
        );
        let resp = self
            .http
            .put(format!("{}/file", self.image(&id)))
            .header("X-Auth-Token", &self.token)
            .header("Content-Type", "application/octet-stream")
            .body(vec![7u8; 1024])
            .send()
            .await
            .expect("Glance answers");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "upload image data");
        id
    }

    /// The HTTP status of GET /v2/images/{id}: 200 while it exists, 404 once gone.
    pub async fn status_of(&self, id: &str) -> StatusCode {
        self.http
            .get(self.image(id))
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .expect("Glance answers")
            .status()
    }

    pub async fn exists(&self, id: &str) -> bool {
        let s = self.status_of(id).await;
        assert!(
            s == StatusCode::OK || s == StatusCode::NOT_FOUND,
            "unexpected GET answer {s}"
        );
        s == StatusCode::OK
    }

    pub async fn set_protected(&self, id: &str, protected: bool) {
        let resp = self
            .http
            .patch(self.image(id))
            .header("X-Auth-Token", &self.token)
            .header(
                "Content-Type",
                "application/openstack-images-v2.1-json-patch",
            )
            .body(json!([{"op": "replace", "path": "/protected", "value": protected}]).to_string())
            .send()
            .await
            .expect("Glance answers");
        assert_eq!(resp.status(), StatusCode::OK, "PATCH protected");
    }

    pub async fn delete_raw(&self, id: &str, token: Option<&str>) -> StatusCode {
        let mut req = self
            .http
            .delete(self.image(id))
            .header("Accept", "application/json");
        if let Some(t) = token {
            req = req.header("X-Auth-Token", t);
        }
        req.send().await.expect("Glance answers").status()
    }
}
