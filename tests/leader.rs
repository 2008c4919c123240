//! Two replicas with leader election against the real kube-apiserver: only
//! the leader acts; a standby finishes a prune when the leader is killed,
//! and takes over at once when the leader is stopped with SIGTERM.

mod common;

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, ListParams};

use common::{Operator, Scope, T, demo_scope, spec, wait_for};

const LEASE: Duration = Duration::from_secs(6);

fn elect(s: &Scope) -> Operator {
    s.start_operator(&[
        "--leader-elect",
        "--leader-election-namespace",
        &s.ns,
        "--leader-election-id",
        "cloudimage-test",
        "--lease-duration",
        "6s",
        "--renew-deadline",
        "4s",
        "--retry-period",
        "1s",
    ])
}

/// Waits until exactly one of the two leads; returns (leader, standby).
async fn leader_of(a: Operator, b: Operator) -> (Operator, Operator) {
    let which = wait_for("one leader", T, || async {
        let (la, lb) = (
            a.metric("cloudimage_leader").await,
            b.metric("cloudimage_leader").await,
        );
        match (la as i64, lb as i64) {
            (1, 0) => Ok(true),
            (0, 1) => Ok(false),
            other => Err(format!("leader gauges {other:?}")),
        }
    })
    .await;
    if which { (a, b) } else { (b, a) }
}

fn cloud_calls(op: &Operator) -> usize {
    op.log()
        .lines()
        .filter(|l| l.contains("cloud answered"))
        .count()
}

#[tokio::test]
async fn a_standby_finishes_a_prune_when_the_leader_is_killed() {
    let (s, g) = demo_scope("leaderkill").await;
    let (leader, standby) = leader_of(elect(&s), elect(&s)).await;
    const N: usize = 50;
    let mut ids = Vec::new();
    for i in 0..N {
        let id = g.create_image(&format!("lk-{i}"), "private").await;
        s.create(
            &format!("img-{i}"),
            spec(&id, common::SECRET, common::CLOUD),
        )
        .await
        .expect("create");
        ids.push(id);
    }
    // Survivors: never deleted, so their images must stay.
    let mut keep = Vec::new();
    for i in 0..3 {
        let id = g.create_image(&format!("keep-{i}"), "private").await;
        s.create(
            &format!("keep-{i}"),
            spec(&id, common::SECRET, common::CLOUD),
        )
        .await
        .expect("create");
        keep.push(id);
    }
    for i in 0..N {
        s.wait_ready(&format!("img-{i}")).await;
    }
    assert_eq!(cloud_calls(&standby), 0, "the standby made no cloud call");

    for i in 0..N {
        s.cimgs()
            .delete(&format!("img-{i}"), &DeleteParams::default())
            .await
            .expect("delete");
    }
    // Kill the leader in the middle of the prune.
    wait_for("some deletions to be done", T, || async {
        let left = s
            .cimgs()
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len();
        if left < N + 3 - 5 {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    })
    .await;
    let killed = Instant::now();
    leader.kill().await;
    wait_for("the standby to lead", LEASE * 3, || async {
        if standby.metric("cloudimage_leader").await as i64 == 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    let takeover = killed.elapsed();
    for i in 0..N {
        s.wait_gone(&format!("img-{i}"), T).await;
    }
    for id in &ids {
        assert!(!g.exists(id).await, "image {id} deleted");
    }
    for id in &keep {
        assert!(g.exists(id).await, "a surviving CloudImage's image stays");
    }
    println!("takeover after SIGKILL: {takeover:?} (lease {LEASE:?})");
    assert!(
        takeover <= LEASE + Duration::from_secs(3),
        "took over within the lease duration (+ one retry): {takeover:?}"
    );
    assert!(cloud_calls(&standby) > 0, "the new leader did the rest");
}

#[tokio::test]
async fn sigterm_hands_the_lease_over_at_once() {
    let s = Scope::new("leaderterm").await;
    let (leader, standby) = leader_of(elect(&s), elect(&s)).await;
    let stopped = Instant::now();
    let status = leader.terminate().await;
    assert!(status.success());
    wait_for("the standby to lead", LEASE * 3, || async {
        if standby.metric("cloudimage_leader").await as i64 == 1 {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    let handover = stopped.elapsed();
    println!("handover after SIGTERM: {handover:?}");
    assert!(
        handover < LEASE / 2,
        "a released Lease is taken well before it would expire: {handover:?}"
    );
}
