//! How lookups are spread over time (`src/controller/pace.rs`), seen from
//! outside: a restart looks up nothing whose status is settled, the periodic
//! lookups still find an image deleted behind the operator's back, new
//! objects are looked up at `--check-rate` at most, and a Secret with an
//! insecure endpoint gets one warning, not one per object. Against the real
//! kube-apiserver, Keystone and Glance.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;

use cloudimage_operator::controller::pace;
use common::{Operator, T, demo_scope, spec, wait_for};

async fn cloud_requests(op: &Operator, operation: &str) -> f64 {
    op.metric_sum(
        "cloudimage_cloud_requests_total",
        &format!("operation=\"{operation}\""),
    )
    .await
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test]
async fn a_restart_looks_up_nothing_settled_and_the_sweep_still_finds_a_deleted_image() {
    let (s, g) = demo_scope("pacing-restart").await;
    let n = 12;
    let ids = s.backed_objects(&g, "img", n).await;
    let first = s.start_operator(&[]);
    for i in 0..n {
        s.wait_ready(&format!("img-{i}")).await;
    }
    first.terminate().await;

    // A long period: the phases that come during the restart are known
    // (computed as the operator does) and, in all likelihood, none.
    let period = 86_400;
    let started = now_secs();
    let op = s.start_operator(&["--resync-interval", "24h"]);
    wait_for(
        "every object in the restarted operator's cache",
        T,
        || async {
            let w = op.metric("cloudimage_objects_watched").await;
            if w >= n as f64 {
                Ok(())
            } else {
                Err(format!("{w} watched"))
            }
        },
    )
    .await;
    // Let any lookup the restart would have sent arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let uids: Vec<String> = {
        let list = s.cimgs().list(&ListParams::default()).await.expect("list");
        list.items
            .iter()
            .filter_map(|o| o.metadata.uid.clone())
            .collect()
    };
    let ended = now_secs();
    let due = uids
        .iter()
        .filter(|u| pace::due(pace::phase(u, period), period, started - 1, ended + 1))
        .count();
    let gets = cloud_requests(&op, "get").await;
    assert!(
        gets <= due as f64,
        "a restart looked up {gets} settled objects (only {due} had their phase in the restart's seconds)"
    );
    op.terminate().await;

    // With a short period the sweep looks every object up again, and finds
    // the image deleted behind the operator's back.
    let op = s.start_operator(&["--resync-interval", "4s"]);
    let gone = g.delete_raw(&ids[3], Some(&g.token)).await;
    assert_eq!(
        gone,
        reqwest::StatusCode::NO_CONTENT,
        "deleting behind the operator's back"
    );
    s.wait_reason("img-3", "Ready", "ImageNotFound").await;
    wait_for("every object looked up by the sweep", T, || async {
        let gets = cloud_requests(&op, "get").await;
        if gets >= n as f64 {
            Ok(())
        } else {
            Err(format!("{gets} lookups"))
        }
    })
    .await;
    // The others are untouched: still there, still Ready.
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != 3) {
        assert!(g.exists(id).await, "image {i} must stay");
        s.wait_ready(&format!("img-{i}")).await;
    }
}

#[tokio::test]
async fn new_objects_are_looked_up_at_the_check_rate_and_one_insecure_secret_warns_once() {
    let (s, _g) = demo_scope("pacing-rate").await;
    let n = 30;
    for i in 0..n {
        // Images nobody created: each lookup answers 404 (ImageNotFound).
        let id = uuid::Uuid::new_v4().to_string();
        s.create(
            &format!("new-{i}"),
            spec(&id, common::SECRET, common::CLOUD),
        )
        .await
        .expect("create");
    }
    let period = 86_400;
    let started = now_secs();
    let op = s.start_operator(&["--check-rate", "5", "--resync-interval", "24h"]);
    for i in 0..n {
        s.wait_reason(&format!("new-{i}"), "Ready", "ImageNotFound")
            .await;
    }
    // Each object looked up once (a lookup that waited for a token, or a
    // second trigger right after the answer, sends nothing), plus any whose
    // second of the (24h) period came during the test.
    let list = s.cimgs().list(&ListParams::default()).await.expect("list");
    let swept = list
        .items
        .iter()
        .filter_map(|o| o.metadata.uid.as_deref())
        .filter(|u| pace::due(pace::phase(u, period), period, started - 1, now_secs() + 1))
        .count();
    let gets = cloud_requests(&op, "get").await;
    assert!(
        gets >= n as f64 && gets <= (n + swept) as f64,
        "{gets} lookups for {n} new objects ({swept} swept)"
    );

    // When each object got its answer, by second: at most the saved-up
    // tokens (5) plus 5 a second in any second (give or take the rounding
    // of lastTransitionTime to seconds and the lookups' latency), spread
    // over >= 4 s. Without the limit all 30 come in one second.
    let mut per_second: BTreeMap<i64, usize> = BTreeMap::new();
    for o in &list.items {
        let st = o.status.as_ref().expect("status");
        let ready = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        *per_second
            .entry(ready.last_transition_time.0.as_second())
            .or_default() += 1;
    }
    let busiest = per_second.values().max().copied().unwrap_or(0);
    let first = per_second.keys().next().copied().unwrap_or(0);
    let last = per_second.keys().last().copied().unwrap_or(0);
    assert!(
        busiest <= 12,
        "a burst of {busiest} lookups in one second: {per_second:?}"
    );
    assert!(
        last - first >= 4,
        "30 lookups at 5/s took {}s: {per_second:?}",
        last - first
    );

    // The test cloud is plain http: one InsecureEndpoint Event, about the Secret.
    let events: Api<Event> = Api::namespaced(s.client.clone(), &s.ns);
    let insecure: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("InsecureEndpoint"))
        .collect();
    assert_eq!(insecure.len(), 1, "{insecure:?}");
    let about = insecure[0].regarding.as_ref().expect("regarding");
    assert_eq!(about.kind.as_deref(), Some("Secret"));
    assert_eq!(about.name.as_deref(), Some(common::SECRET));
    assert!(
        insecure[0]
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("insecurely"),
        "{:?}",
        insecure[0].note
    );
}

/// Behind a rate-limiting proxy (the fault relay answering 429 beyond 2
/// calls in flight: the test Glance itself never throttles), the operator
/// sizes its calls to what the cloud takes: every image is still deleted,
/// and the 429s stay few, instead of most calls being refused and retried.
#[tokio::test]
async fn calls_at_once_shrink_to_what_a_throttling_cloud_takes() {
    use common::fault_relay::{FaultConfig, FaultRelay, Peer};
    let (s, g) = demo_scope("pacing-throttle").await;
    let glance = s.env.glance_url();
    let u = url::Url::parse(&glance).expect("Glance URL");
    let relay = FaultRelay::start(
        Peer::Glance,
        &format!(
            "{}:{}",
            u.host_str().expect("host"),
            u.port_or_known_default().expect("port")
        ),
        7,
        &FaultConfig {
            rate: 0.0,
            max_in_flight: Some(2),
            ..FaultConfig::default()
        },
    )
    .await;
    let secret = "throttled-creds";
    s.put_secret(
        secret,
        &s.env.clouds_yaml(
            common::CLOUD,
            "demo",
            serde_json::json!({"image_endpoint_override": relay.url()}),
        ),
    )
    .await;
    let n = 40;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = g.create_image(&format!("throttle-{i}"), "private").await;
        s.create(&format!("t-{i}"), spec(&id, secret, common::CLOUD))
            .await
            .expect("create");
        ids.push(id);
    }
    let op = s.start_operator(&["--concurrency", "16", "--per-namespace-concurrency", "16"]);
    for i in 0..n {
        s.wait_reason(&format!("t-{i}"), "Ready", "ImageAvailable")
            .await;
    }
    let cloud = s.cimgs();
    cloud
        .delete_collection(&kube::api::DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete all");
    for i in 0..n {
        s.wait_gone(&format!("t-{i}"), Duration::from_secs(120))
            .await;
    }
    for id in &ids {
        assert!(!g.exists(id).await, "image {id} must be gone");
    }
    let counts = relay.counts();
    let answered = counts.relayed;
    eprintln!(
        "[pacing] {} requests, {} answered by Glance, {} throttled",
        counts.requests, answered, counts.throttled
    );
    assert!(
        counts.throttled > 0,
        "the proxy never throttled: nothing was tested"
    );
    // About 80 calls answered (40 lookups, 40 deletions). Sizing itself,
    // the operator meets about one 429 for every two answers (the probe
    // each time the limit grows back); sending 16 at once without backing
    // off, it meets more 429s than answers (measured: 106 for 83).
    assert!(
        counts.throttled * 3 <= answered * 2,
        "{} throttled for {answered} answered",
        counts.throttled
    );
    assert!(
        op.log().contains("the cloud pushed back"),
        "no push-back logged"
    );
}
