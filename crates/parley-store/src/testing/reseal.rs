//! Contract tests for sealing a store in place: unsealed conversations listed with every row that
//! holds content, each rewritten whole in one transaction or not at all, and compaction.

use parley_domain::{Conversation, ConversationId};
use serde_json::Value;

use super::{SECRET, T0, TestStore, at, conversation, deliveries_of, ended_call, finish};
use crate::table::{Table, Value as Cell};
use crate::{
    ContentFields, ConversationStore, JobKind, Resealed, SEALED_PREFIX as PREFIX, UnsealedConversation,
};

/// Every unsealed conversation, in pages of two.
async fn all_unsealed(store: &dyn ConversationStore) -> Vec<UnsealedConversation> {
    let mut all: Vec<UnsealedConversation> = Vec::new();
    loop {
        let after = all.last().map(|c| c.id.clone());
        let page = store
            .unsealed_conversations(after.as_ref(), 2)
            .await
            .expect("listing unsealed conversations");
        if page.is_empty() {
            return all;
        }
        assert!(page.len() <= 2);
        all.extend(page);
    }
}

/// The content fields of a conversation as written.
fn fields_of(c: &Conversation) -> ContentFields {
    ContentFields {
        conversation_name: c.conversation_name.clone(),
        conversational_context: c.conversational_context.clone(),
        custom_greeting: c.custom_greeting.clone(),
        request_json: c.request_json.clone(),
    }
}

/// New values for every content row of `c`: its fields, its content events and deliveries.
fn resealed(c: &UnsealedConversation, tag: &str) -> Resealed {
    Resealed {
        id: c.id.clone(),
        fields: ContentFields {
            conversation_name: Some(format!("{PREFIX}name-{tag}")),
            conversational_context: Some(format!("{PREFIX}context-{tag}")),
            custom_greeting: None,
            request_json: format!("{PREFIX}request-{tag}"),
        },
        events: c
            .events
            .iter()
            .filter(|e| e.event_type.starts_with("application."))
            .map(|e| (e.event_id, format!("\"{PREFIX}event-{}-{tag}\"", e.event_id)))
            .collect(),
        deliveries: c
            .deliveries
            .iter()
            .filter(|d| d.carries_content)
            .map(|d| {
                (
                    d.delivery_id.clone(),
                    format!("{{\"properties\":\"{PREFIX}{tag}\"}}"),
                )
            })
            .collect(),
    }
}

/// `(delivery_id, payload)` of a conversation's deliveries, from an export of the table.
async fn payloads(store: &dyn ConversationStore, id: &ConversationId) -> Vec<(String, String)> {
    let rows = store
        .export_rows(Table::Delivery, None, 1000)
        .await
        .expect("export");
    let column = |name: &str| {
        Table::Delivery
            .columns()
            .iter()
            .position(|(c, _)| *c == name)
            .expect("a delivery column")
    };
    let (conversation, delivery, payload) = (
        column("conversation_id"),
        column("delivery_id"),
        column("payload"),
    );
    rows.into_iter()
        .filter(|r| r[conversation] == Cell::Text(id.as_str().to_owned()))
        .map(|r| match (&r[delivery], &r[payload]) {
            (Cell::Text(d), Cell::Text(p)) => (d.clone(), p.clone()),
            other => panic!("unexpected delivery cells {other:?}"),
        })
        .collect()
}

pub async fn unsealed_conversations_come_a_page_at_a_time_with_every_content_row<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let mut calls = Vec::new();
    for i in 0..3 {
        calls.push(ended_call(&*store, "acme", at(i * 10)).await);
    }
    let mut sealed = conversation("acme", at(40));
    sealed.request_json = format!("{PREFIX}c2VhbGVk");
    store
        .create_conversation(&sealed, 100, &[])
        .await
        .expect("create");

    assert_eq!(store.count_unsealed().await.expect("count"), 3);
    let listed = all_unsealed(&*store).await;
    let mut expected: Vec<&ConversationId> = calls.iter().map(|c| &c.id).collect();
    expected.sort();
    assert_eq!(listed.iter().map(|c| &c.id).collect::<Vec<_>>(), expected);

    for u in &listed {
        let c = calls.iter().find(|c| c.id == u.id).expect("one of the calls");
        assert_eq!(u.fields, fields_of(c));
        let types: Vec<&str> = u.events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "system.replica_joined",
                "system.shutdown",
                "application.transcription_ready",
                "application.recording_ready"
            ]
        );
        assert!(u.events.windows(2).all(|w| w[0].event_id < w[1].event_id));
        for e in &u.events {
            let _: Value = serde_json::from_str(&e.properties).expect("properties are JSON text");
        }
        assert!(u.events[2].properties.contains(SECRET));
        let deliveries = deliveries_of(&*store, &c.id).await;
        let ids: Vec<&str> = u.deliveries.iter().map(|d| d.delivery_id.as_str()).collect();
        assert_eq!(ids, deliveries.iter().map(|d| d.id.as_str()).collect::<Vec<_>>());
        let content: Vec<bool> = u.deliveries.iter().map(|d| d.carries_content).collect();
        assert_eq!(content, [false, false, true, true]);
        assert_eq!(
            u.deliveries
                .iter()
                .map(|d| (d.delivery_id.clone(), d.payload.clone()))
                .collect::<Vec<_>>(),
            payloads(&*store, &c.id).await
        );
        assert!(u.deliveries[2].payload.contains(SECRET));
        assert_eq!(u.assets.len(), 1);
        let asset = &u.assets[0];
        assert_eq!(
            (asset.name.as_str(), asset.blob_key.as_str(), asset.size),
            (
                "recording.wav",
                format!("conversations/{}/assets/recording.wav", c.id).as_str(),
                48_044
            )
        );
    }
    let expected: Vec<(JobKind, &ConversationId)> =
        calls.iter().map(|c| (JobKind::Finalize, &c.id)).collect();
    finish(t, &expected).await;
}

pub async fn resealing_rewrites_every_content_row_of_a_conversation_at_once<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let a = ended_call(&*store, "acme", T0).await;
    let b = ended_call(&*store, "acme", at(10)).await;
    let before = all_unsealed(&*store).await;
    let ua = before.iter().find(|c| c.id == a.id).expect("a is listed");
    let ub = format!("{:?}", before.iter().find(|c| c.id == b.id).expect("b is listed"));
    let new = resealed(ua, "1");

    let applied = store.reseal_conversations(std::slice::from_ref(&new)).await;
    assert_eq!(applied.expect("reseal"), 1);

    let got = store.load_conversation(&a.id).await.expect("load").expect("a");
    assert_eq!(fields_of(&got), new.fields);
    let events = store.list_events(&a.id).await.expect("events");
    assert_eq!(events.len(), 4);
    for (stored, raw) in events.iter().zip(&ua.events) {
        let expected = match new.events.iter().find(|(id, _)| *id == raw.event_id) {
            Some((_, properties)) => properties.clone(),
            None => raw.properties.clone(),
        };
        assert_eq!(
            stored.properties,
            serde_json::from_str::<Value>(&expected).expect("JSON")
        );
    }
    let expected: Vec<(String, String)> = ua
        .deliveries
        .iter()
        .map(
            |d| match new.deliveries.iter().find(|(id, _)| *id == d.delivery_id) {
                Some(rewritten) => rewritten.clone(),
                None => (d.delivery_id.clone(), d.payload.clone()),
            },
        )
        .collect();
    assert_eq!(payloads(&*store, &a.id).await, expected);
    // The other conversation is untouched, and alone left to seal.
    assert_eq!(store.count_unsealed().await.expect("count"), 1);
    let left = all_unsealed(&*store).await;
    assert_eq!(left.len(), 1);
    assert_eq!(format!("{:?}", left[0]), ub);

    // Sealed by now (by another process, say): a second reseal of it is skipped whole.
    let again = resealed(ua, "2");
    let applied = store.reseal_conversations(&[again]).await;
    assert_eq!(applied.expect("reseal"), 0);
    let got = store.load_conversation(&a.id).await.expect("load").expect("a");
    assert_eq!(fields_of(&got), new.fields);
    assert_eq!(payloads(&*store, &a.id).await, expected);
    finish(t, &[(JobKind::Finalize, &a.id), (JobKind::Finalize, &b.id)]).await;
}

pub async fn a_reseal_naming_another_conversations_row_changes_nothing<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let a = ended_call(&*store, "acme", T0).await;
    let b = ended_call(&*store, "acme", at(10)).await;
    let before = all_unsealed(&*store).await;
    let ua = before.iter().find(|c| c.id == a.id).expect("a is listed");
    let ub = before.iter().find(|c| c.id == b.id).expect("b is listed");

    // A good reseal of b, then one of a naming b's event: neither happens.
    let mut wrong_event = resealed(ua, "x");
    wrong_event
        .events
        .push((ub.events[2].event_id, "\"pe1:moved\"".into()));
    let refused = store
        .reseal_conversations(&[resealed(ub, "ok"), wrong_event])
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // And one naming a delivery that is not a's.
    let mut wrong_delivery = resealed(ua, "y");
    wrong_delivery
        .deliveries
        .push(("dnotadelivery".into(), "{}".into()));
    let refused = store.reseal_conversations(&[wrong_delivery]).await;
    assert!(refused.is_err(), "{refused:?}");

    assert_eq!(store.count_unsealed().await.expect("count"), 2);
    assert_eq!(
        format!("{:?}", all_unsealed(&*store).await),
        format!("{before:?}")
    );
    finish(t, &[(JobKind::Finalize, &a.id), (JobKind::Finalize, &b.id)]).await;
}

pub async fn compacting_keeps_every_row<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    let a = ended_call(&*store, "acme", T0).await;
    let b = ended_call(&*store, "acme", at(10)).await;
    let page = all_unsealed(&*store).await;
    let ua = page.iter().find(|c| c.id == a.id).expect("a is listed");
    let applied = store.reseal_conversations(&[resealed(ua, "1")]).await;
    assert_eq!(applied.expect("reseal"), 1);
    let mut before = Vec::new();
    for table in Table::ALL {
        before.push(store.export_rows(table, None, 1000).await.expect("export"));
    }

    store.compact().await.expect("compact");

    for (table, rows) in Table::ALL.into_iter().zip(&before) {
        let after = store.export_rows(table, None, 1000).await.expect("export");
        assert_eq!(&after, rows, "{}", table.name());
    }
    finish(t, &[(JobKind::Finalize, &a.id), (JobKind::Finalize, &b.id)]).await;
}
