//! Migrations on a shared database: releases starting at once on an empty database all get
//! through, and an older release runs on the schema a newer one migrated (they are additive).

use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinSet;

use crate::support::*;

on_each_engine!(
    releases_starting_at_once_on_an_empty_database_all_migrate_it,
    an_older_release_runs_on_a_newer_schema,
);

/// The schema version of this release: its number of migrations.
const CURRENT_SCHEMA: i64 = 2;
/// Releases opening the empty database at the same moment.
const RELEASES: usize = 6;

async fn releases_starting_at_once_on_an_empty_database_all_migrate_it(engine: Engine) {
    let db = TestDb::new(engine).await;

    let mut starts = JoinSet::new();
    for i in 0..RELEASES {
        let db = db.clone();
        starts.spawn(async move { spawn_app_on(&db, &["--release", &format!("v{i}")]).await });
    }
    let mut apps = Vec::new();
    while let Some(app) = starts.join_next().await {
        apps.push(app.expect("every release starts"));
    }

    assert_eq!(db.schema_version().await, CURRENT_SCHEMA);
    for (i, app) in apps.iter().enumerate() {
        let code = format!("from-{i}");
        app.create("https://example.com/", Some(&code)).await;
        let other = &apps[(i + 1) % apps.len()];
        let res = send(other.get(&format!("/{code}"))).await;
        assert_eq!(res.status(), StatusCode::FOUND, "{code}");
    }
}

async fn an_older_release_runs_on_a_newer_schema(engine: Engine) {
    let db = TestDb::new(engine).await;
    spawn_app_on(&db, &["--release", "v1"])
        .await
        .create("https://example.com/before", Some("before"))
        .await;
    // What a newer release's migrations may do: a defaulted NOT NULL column, a nullable one, a
    // table, an index, and a higher version.
    db.execute(
        "ALTER TABLE links ADD COLUMN note TEXT NOT NULL DEFAULT '';
         ALTER TABLE links ADD COLUMN expires_at TEXT;
         CREATE TABLE tags (code TEXT NOT NULL, tag TEXT NOT NULL);
         CREATE INDEX links_expires_at ON links (expires_at);",
    )
    .await;
    db.set_schema_version(99).await;

    let older = spawn_app_on(&db, &["--release", "v0"]).await;
    let created = older
        .create("https://example.com/after", Some("after"))
        .await;
    let keyed = |url: &str| {
        older
            .post_json("/api/links", &json!({ "url": url }))
            .header("x-request-id", "older-1")
    };
    let first = json_of(send(keyed("https://example.com/keyed")).await).await;
    let again = json_of(send(keyed("https://example.com/keyed")).await).await;
    let follow = send(older.get("/after")).await;
    let shown = json_of(send(older.get("/api/links/after")).await).await;
    let listed = json_of(send(older.get("/api/links")).await).await;
    let old_row = send(older.get("/before")).await;
    let health = send(older.get("/healthz")).await;
    let deleted = send(older.delete("/api/links/after")).await;

    assert_eq!(created["code"], "after");
    assert_eq!(
        again["code"], first["code"],
        "the write key still deduplicates"
    );
    assert_eq!(follow.status(), StatusCode::FOUND);
    assert_eq!(shown["clicks"], 1);
    assert_eq!(shown["release"], "v0");
    assert_eq!(
        listed["links"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
    assert_eq!(old_row.status(), StatusCode::FOUND);
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        db.schema_version().await,
        99,
        "an older release leaves it as it is"
    );
}
