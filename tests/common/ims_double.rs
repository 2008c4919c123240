//! A local HTTP double of Huawei Cloud IMS's "OpenStack-native" image API.
//!
//! It exists only because no real IMS can be reached from here, and upstream
//! Glance cannot produce IMS's dialect: the `{"delete_backup": bool}` DELETE
//! body, a 204 that only means "accepted" (GET keeps finding the image for a
//! while), and `IMG.xxxx` error codes returned as 400. It follows
//! `docs/cloud-api-contract.md` and nothing more. Authentication still goes to the
//! real Keystone; the double only checks that a token is present.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

#[derive(Clone, Debug)]
struct Image {
    protected: bool,
    /// After an accepted DELETE: how many more GETs still find the image.
    visible_after_delete: u32,
    deleted: bool,
}

/// One DELETE the double received.
#[derive(Clone, Debug, PartialEq)]
pub struct DeleteCall {
    pub image_id: String,
    pub content_type: Option<String>,
    pub body: String,
}

#[derive(Default)]
struct Inner {
    /// Tokens the double treats as revoked (401 APIGW.0301).
    revoked: Vec<String>,
    /// Every token seen (GET and DELETE), in order.
    tokens: Vec<String>,
    /// The token of each DELETE, in order.
    delete_tokens: Vec<String>,
    images: HashMap<String, Image>,
    deletes: Vec<DeleteCall>,
    gets_after_delete: HashMap<String, u32>,
}

#[derive(Clone, Default)]
pub struct ImsDouble {
    inner: Arc<Mutex<Inner>>,
    pub addr: Option<SocketAddr>,
}

fn ims_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [
            ("content-type", "application/json"),
            ("x-request-id", "ims-double-req"),
        ],
        json!({"error": {"message": message, "code": code}}).to_string(),
    )
        .into_response()
}

async fn get_image(
    State(d): State<ImsDouble>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !headers.contains_key("x-auth-token") {
        return (
            StatusCode::UNAUTHORIZED,
            json!({"error_msg": "no token", "error_code": "APIGW.0301"}).to_string(),
        )
            .into_response();
    }
    let mut g = d.inner.lock().expect("lock");
    if let Some(t) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        g.tokens.push(t.to_owned());
    }
    let Some(img) = g.images.get_mut(&id) else {
        return ims_error(StatusCode::NOT_FOUND, "IMG.0027", "image not found");
    };
    if img.deleted {
        if img.visible_after_delete == 0 {
            return ims_error(StatusCode::NOT_FOUND, "IMG.0027", "image not found");
        }
        img.visible_after_delete -= 1;
    }
    let protected = img.protected;
    *g.gets_after_delete.entry(id.clone()).or_insert(0) +=
        u32::from(g.images.get(&id).is_some_and(|i| i.deleted));
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"id": id, "name": "ims-double-image", "status": "active", "visibility": "private",
               "protected": protected, "size": 1024, "checksum": "d41d8cd98f00b204e9800998ecf8427e",
               "__whole_image": "true", "updated_at": "2026-11-30T00:00:00Z"})
        .to_string(),
    )
        .into_response()
}

async fn delete_image(
    State(d): State<ImsDouble>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let token = headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    {
        let mut g = d.inner.lock().expect("lock");
        g.tokens.push(token.clone());
        g.delete_tokens.push(token.clone());
        if token.is_empty() || g.revoked.contains(&token) {
            return (
                StatusCode::UNAUTHORIZED,
                json!({"error_msg": "token invalid", "error_code": "APIGW.0301"}).to_string(),
            )
                .into_response();
        }
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut g = d.inner.lock().expect("lock");
    g.deletes.push(DeleteCall {
        image_id: id.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
    });
    let parsed: Option<serde_json::Value> = serde_json::from_str(&body).ok();
    let valid = content_type.as_deref() == Some("application/json")
        && parsed
            .as_ref()
            .and_then(|v| v.get("delete_backup"))
            .is_some_and(|b| b.is_boolean());
    if !valid && !body.is_empty() {
        return ims_error(StatusCode::BAD_REQUEST, "IMG.0001", "invalid request body");
    }
    match g.images.get_mut(&id) {
        None => ims_error(StatusCode::NOT_FOUND, "IMG.0027", "image not found"),
        Some(img) if img.deleted => ims_error(
            StatusCode::BAD_REQUEST,
            "IMG.0144",
            "image is being deleted",
        ),
        Some(img) if img.protected => ims_error(
            StatusCode::BAD_REQUEST,
            "IMG.0028",
            "The image is protected and cannot be deleted.",
        ),
        Some(img) => {
            img.deleted = true;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

impl ImsDouble {
    /// Starts the double on a free loopback port.
    pub async fn start() -> ImsDouble {
        let mut d = ImsDouble::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        d.addr = Some(listener.local_addr().expect("addr"));
        let app = Router::new()
            .route("/v2/images/{id}", get(get_image).delete(delete_image))
            .with_state(d.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        d
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("started"))
    }

    /// Adds an image; after an accepted DELETE, GET still finds it `visible_after_delete` times.
    pub fn add_image(&self, id: &str, protected: bool, visible_after_delete: u32) {
        self.inner.lock().expect("lock").images.insert(
            id.to_owned(),
            Image {
                protected,
                visible_after_delete,
                deleted: false,
            },
        );
    }

    pub fn set_protected(&self, id: &str, protected: bool) {
        if let Some(i) = self.inner.lock().expect("lock").images.get_mut(id) {
            i.protected = protected;
        }
    }

    /// Revokes every token seen so far: the next DELETE with one gets 401.
    pub fn revoke_seen_tokens(&self) {
        let mut g = self.inner.lock().expect("lock");
        let seen = g.tokens.clone();
        g.revoked.extend(seen);
    }

    /// Every token the double received (GET and DELETE).
    pub fn tokens(&self) -> Vec<String> {
        self.inner.lock().expect("lock").tokens.clone()
    }

    /// The token each DELETE carried, in order.
    pub fn delete_tokens(&self) -> Vec<String> {
        self.inner.lock().expect("lock").delete_tokens.clone()
    }

    pub fn deletes(&self) -> Vec<DeleteCall> {
        self.inner.lock().expect("lock").deletes.clone()
    }

    /// GETs answered 200 after the image was deleted (the "still visible" period).
    pub fn gets_after_delete(&self, id: &str) -> u32 {
        self.inner
            .lock()
            .expect("lock")
            .gets_after_delete
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    pub fn is_deleted(&self, id: &str) -> bool {
        self.inner
            .lock()
            .expect("lock")
            .images
            .get(id)
            .is_some_and(|i| i.deleted)
    }
}
