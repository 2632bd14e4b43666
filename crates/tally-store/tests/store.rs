//! The raw store end to end on a real data directory: appends, imports,
//! restarts, dedupe, scoping, compaction.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use tally_core::{Attributes, Identity, MeterKind, Role, UsageRecord};
use tally_db::Database;
use tally_store::{EventFilter, QueryCursor, RawStore, StoreConfig};

fn record(i: u64, project: &str, received: DateTime<Utc>) -> UsageRecord {
    UsageRecord {
        id: format!("ev-{i}"),
        source: "test".into(),
        time: Utc
            .with_ymd_and_hms(2026, 10, 1 + (i % 3) as u32, 12, 0, 0)
            .unwrap()
            + chrono::Duration::seconds(i as i64),
        received_at: received,
        project_id: project.into(),
        user_id: None,
        domain_id: None,
        resource_id: format!("vol-{}", i % 4),
        meter: "volume.size".into(),
        kind: MeterKind::Gauge,
        volume: Decimal::from_str("0.1").unwrap(),
        unit: Some("GiB".into()),
        attributes: Attributes::new(),
        payload: Bytes::from(format!("{{\"id\":\"ev-{i}\"}}")),
    }
}

fn admin() -> Identity {
    Identity {
        principal: "test".into(),
        role: Role::Admin,
    }
}

async fn open(dir: &std::path::Path, tweak: impl FnOnce(&mut StoreConfig)) -> RawStore {
    let db = Database::open(&Database::sqlite_url_in(dir)).await.unwrap();
    let mut cfg = StoreConfig::new(dir);
    tweak(&mut cfg);
    RawStore::open(cfg, db).await.unwrap()
}

async fn all(store: &RawStore, who: &Identity) -> Vec<UsageRecord> {
    store
        .query(who, &EventFilter::default(), None, usize::MAX)
        .await
        .unwrap()
        .records
}

#[tokio::test(flavor = "multi_thread")]
async fn appended_records_are_readable_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path(), |_| {}).await;
    let out = store
        .append((0..10).map(|i| record(i, "p1", now)).collect())
        .await
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (10, 0));
    assert_eq!(
        all(&store, &admin()).await.len(),
        10,
        "readable before flush"
    );
    store.shutdown().await.unwrap();

    let store = open(dir.path(), |_| {}).await;
    let got = all(&store, &admin()).await;
    assert_eq!(got.len(), 10);
    assert_eq!(got[0].volume.to_string(), "0.1");
    // Dedupe survived the restart.
    let again = store
        .append((0..10).map(|i| record(i, "p1", now)).collect())
        .await
        .unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 10));
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unflushed_log_is_replayed_after_an_abrupt_stop() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    {
        // No shutdown: the log is never flushed by this instance.
        let store = open(dir.path(), |c| c.flush_interval = Duration::from_secs(3600)).await;
        store
            .append((0..5).map(|i| record(i, "p1", now)).collect())
            .await
            .unwrap();
        std::mem::forget(store);
    }
    let store = open(dir.path(), |_| {}).await;
    assert_eq!(all(&store, &admin()).await.len(), 5);
    let again = store.append(vec![record(3, "p1", now)]).await.unwrap();
    assert_eq!(again.duplicates, 1);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_within_one_request_and_across_concurrent_requests_count_once() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path(), |_| {}).await;
    let out = store
        .append(vec![
            record(1, "p", now),
            record(1, "p", now),
            record(2, "p", now),
        ])
        .await
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (2, 1));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.append((0..100).map(|i| record(i, "p", now)).collect())
                .await
                .unwrap()
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap().accepted;
    }
    assert_eq!(accepted, 98, "ids 0..100 minus the two already stored");
    assert_eq!(all(&store, &admin()).await.len(), 100);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dedupe_window_is_respected() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path(), |c| c.dedupe_window_days = 2).await;
    let old = now - chrono::Duration::days(5);
    store.import(vec![record(1, "p", old)]).await.unwrap();
    store.import(vec![record(2, "p", now)]).await.unwrap();
    store.evict_dedupe(now);
    store.shutdown().await.unwrap();
    // After a restart, the key outside the window is forgotten; the other is not.
    let store = open(dir.path(), |c| c.dedupe_window_days = 2).await;
    let out = store
        .import(vec![record(1, "p", now), record(2, "p", now)])
        .await
        .unwrap();
    assert_eq!((out.accepted, out.duplicates), (1, 1));
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn project_readers_see_only_their_project() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path(), |_| {}).await;
    let mut recs: Vec<_> = (0..6).map(|i| record(i, "p1", now)).collect();
    recs.extend((6..9).map(|i| record(i, "p2", now)));
    store.import(recs).await.unwrap();
    let reader = Identity {
        principal: "k".into(),
        role: Role::ProjectReader {
            project_id: "p2".into(),
        },
    };
    let mine = all(&store, &reader).await;
    assert_eq!(mine.len(), 3);
    assert!(mine.iter().all(|r| r.project_id == "p2"));
    let other = EventFilter {
        project_id: Some("p1".into()),
        ..Default::default()
    };
    let page = store.query(&reader, &other, None, 100).await.unwrap();
    assert!(
        page.records.is_empty(),
        "asking for another project gives nothing"
    );
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn pagination_visits_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path(), |_| {}).await;
    store
        .import((0..50).map(|i| record(i, "p", now)).collect())
        .await
        .unwrap();
    store
        .append((50..75).map(|i| record(i, "p", now)).collect())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor: Option<QueryCursor> = None;
    loop {
        let page = store
            .query(&admin(), &EventFilter::default(), cursor.as_ref(), 7)
            .await
            .unwrap();
        seen.extend(page.records.iter().map(|r| (r.time, r.id.clone())));
        match page.next {
            Some(c) => cursor = Some(QueryCursor::decode(&c.encode()).unwrap()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 75);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);
    assert!(QueryCursor::decode("garbage").is_err());
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_merges_small_segments_without_changing_contents() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path(), |c| {
        c.compaction_min_segments = 3;
        c.retired_grace = Duration::ZERO;
    })
    .await;
    for b in 0..4u64 {
        store
            .import((b * 10..b * 10 + 10).map(|i| record(i, "p", now)).collect())
            .await
            .unwrap();
    }
    let before = all(&store, &admin()).await;
    let segs_before = store.stats().await.unwrap().catalog.segments;
    let retired = store.compact_once().await.unwrap();
    assert!(retired >= 3, "retired {retired}");
    let after = all(&store, &admin()).await;
    assert_eq!(before, after);
    assert!(store.stats().await.unwrap().catalog.segments < segs_before);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(store.delete_retired().await.unwrap(), retired);
    assert_eq!(all(&store, &admin()).await, before);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_select_by_resource_meter_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let store = open(dir.path(), |_| {}).await;
    store
        .import((0..30).map(|i| record(i, "p", now)).collect())
        .await
        .unwrap();
    let f = EventFilter {
        resource_id: Some("vol-1".into()),
        from: Some(Utc.with_ymd_and_hms(2026, 10, 2, 0, 0, 0).unwrap()),
        to: Some(Utc.with_ymd_and_hms(2026, 10, 3, 0, 0, 0).unwrap()),
        ..Default::default()
    };
    let got = store.query(&admin(), &f, None, 100).await.unwrap().records;
    let expected: Vec<u64> = (0..30).filter(|i| i % 4 == 1 && i % 3 == 1).collect();
    assert_eq!(got.len(), expected.len());
    let f = EventFilter {
        meter: Some("nope".into()),
        ..Default::default()
    };
    assert!(
        store
            .query(&admin(), &f, None, 100)
            .await
            .unwrap()
            .records
            .is_empty()
    );
    store.shutdown().await.unwrap();
}
