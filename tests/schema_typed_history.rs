//! The typed-history migration (SQLite 0070, PostgreSQL 0060) converts the
//! rows an older build wrote as text: stage names to codes, an event cause
//! to its 16 bytes, a time-rule cause to its code, alert event ids from
//! comma-separated text to 16 bytes each. Runs the schema's own SQL files
//! on a real SQLite file and a real PostgreSQL database.

use std::path::Path;

use journey_ledger::projections::lifecycle::{Stage, TimeRule};
use journey_ledger::testing::{temp_sqlite, TempDatabase};
use sqlx::{Connection, Executor, Row};
use uuid::Uuid;

/// The SQL of every migration in `dir`, by version, split at `version`:
/// those before it, and its own.
fn migrations(dir: &str, version: u32) -> (Vec<String>, String) {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let number = |p: &Path| -> u32 {
        p.file_name().unwrap().to_str().unwrap()[..4]
            .parse()
            .unwrap()
    };
    let before = files
        .iter()
        .filter(|p| number(p) < version)
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let own = files.iter().find(|p| number(p) == version).unwrap();
    (before, std::fs::read_to_string(own).unwrap())
}

const EVENT: &str = "49e86b2d-7f58-49d3-82b3-d1cb71ed02f1";
const OTHER: &str = "9f3e9e2d-a559-4a20-af52-cb1dc7bd2520";

/// Rows as an older build wrote them.
const OLD_ROWS: &str = "
    INSERT INTO lifecycle_transitions (model_version, customer_id, seq, from_stage, to_stage, at_us, cause) VALUES
        (1, 'ada', 1, NULL, 'prospect', 10, '49e86b2d-7f58-49d3-82b3-d1cb71ed02f1'),
        (1, 'ada', 2, 'prospect', 'new', 20, '9f3e9e2d-a559-4a20-af52-cb1dc7bd2520'),
        (1, 'ada', 3, 'new', 'at_risk', 30, 'rule:at_risk_after_90_days'),
        (1, 'ada', 4, 'at_risk', 'dormant', 40, 'rule:dormant_after_180_days'),
        (1, 'ada', 5, 'dormant', 'churned', 50, 'rule:churned_after_365_days'),
        (1, 'bob', 1, 'new', 'active', 60, 'rule:new_ends_after_90_days'),
        (1, 'bob', 2, 'active', 'mature', 70, 'rule:mature_after_365_days_with_4_orders_in_365_days'),
        (1, 'bob', 3, 'mature', 'active', 80, 'rule:mature_needs_4_orders_in_365_days'),
        (1, 'bob', 4, 'reactivated', 'active', 90, 'rule:reactivated_ends_after_90_days'),
        (1, 'bob', 5, 'active', 'prospect', 95, 'rule:prospect_by_time');
    INSERT INTO churn_alerts (model_version, customer_id, seq, rule, at_us, event_ids, detail) VALUES
        (1, 'ada', 1, 'complaints', 30, '49e86b2d-7f58-49d3-82b3-d1cb71ed02f1,9f3e9e2d-a559-4a20-af52-cb1dc7bd2520', 'two');
";

/// A converted transition: customer, seq, from and to stage codes, cause
/// event, cause rule code.
type TransitionRow = (String, i64, Option<i64>, i64, Option<Uuid>, Option<i64>);

/// What the migration must make of [`OLD_ROWS`].
fn expected() -> Vec<TransitionRow> {
    let event = |s: &str| Some(Uuid::parse_str(s).unwrap());
    let code = |s: Stage| s.code();
    let rule = |r: TimeRule| Some(r.code());
    let days = |days| TimeRule::AtRiskAfter { days };
    vec![
        (
            "ada".into(),
            1,
            None,
            code(Stage::Prospect),
            event(EVENT),
            None,
        ),
        (
            "ada".into(),
            2,
            Some(code(Stage::Prospect)),
            code(Stage::New),
            event(OTHER),
            None,
        ),
        (
            "ada".into(),
            3,
            Some(code(Stage::New)),
            code(Stage::AtRisk),
            None,
            rule(days(90)),
        ),
        (
            "ada".into(),
            4,
            Some(code(Stage::AtRisk)),
            code(Stage::Dormant),
            None,
            rule(TimeRule::DormantAfter { days: 180 }),
        ),
        (
            "ada".into(),
            5,
            Some(code(Stage::Dormant)),
            code(Stage::Churned),
            None,
            rule(TimeRule::ChurnedAfter { days: 365 }),
        ),
        (
            "bob".into(),
            1,
            Some(code(Stage::New)),
            code(Stage::Active),
            None,
            rule(TimeRule::NewEndsAfter { days: 90 }),
        ),
        (
            "bob".into(),
            2,
            Some(code(Stage::Active)),
            code(Stage::Mature),
            None,
            rule(TimeRule::MatureAfter {
                tenure_days: 365,
                min_orders: 4,
                window_days: 365,
            }),
        ),
        (
            "bob".into(),
            3,
            Some(code(Stage::Mature)),
            code(Stage::Active),
            None,
            rule(TimeRule::MatureNeeds {
                min_orders: 4,
                window_days: 365,
            }),
        ),
        (
            "bob".into(),
            4,
            Some(code(Stage::Reactivated)),
            code(Stage::Active),
            None,
            rule(TimeRule::ReactivatedEndsAfter { days: 90 }),
        ),
        (
            "bob".into(),
            5,
            Some(code(Stage::Active)),
            code(Stage::Prospect),
            None,
            rule(TimeRule::ByTime(Stage::Prospect)),
        ),
    ]
}

fn alert_ids() -> Vec<u8> {
    [EVENT, OTHER]
        .iter()
        .flat_map(|s| *Uuid::parse_str(s).unwrap().as_bytes())
        .collect()
}

fn all_rules() -> Vec<TimeRule> {
    let mut rules = vec![
        TimeRule::AtRiskAfter { days: 1 },
        TimeRule::DormantAfter { days: 2 },
        TimeRule::ChurnedAfter { days: 3 },
        TimeRule::MatureAfter {
            tenure_days: 4,
            min_orders: 5,
            window_days: 6,
        },
        TimeRule::NewEndsAfter { days: 7 },
        TimeRule::ReactivatedEndsAfter { days: 8 },
        TimeRule::MatureNeeds {
            min_orders: 9,
            window_days: 10,
        },
    ];
    rules.extend(Stage::ALL.map(TimeRule::ByTime));
    rules
}

/// `at_risk_after_90_days` → `at_risk_after_days`.
fn without_numbers(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.chars().all(|c| c.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join("_")
}

const READ_BACK: &str = "SELECT customer_id, seq, from_stage, to_stage, cause_event, cause_rule \
     FROM lifecycle_transitions ORDER BY customer_id, seq";

#[tokio::test]
async fn sqlite_history_rows_are_converted_to_codes_and_ids() {
    let (_dir, url) = temp_sqlite();
    let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    let (before, own) = migrations("schema/sqlite", 70);
    for sql in before {
        conn.execute(sqlx::raw_sql(&sql)).await.unwrap();
    }
    conn.execute(sqlx::raw_sql(OLD_ROWS)).await.unwrap();
    conn.execute(sqlx::raw_sql(&own)).await.unwrap();

    let rows: Vec<_> = sqlx::query(READ_BACK)
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let event: Option<Vec<u8>> = r.get(4);
            (
                r.get::<String, _>(0),
                r.get::<i64, _>(1),
                r.get::<Option<i64>, _>(2),
                r.get::<i64, _>(3),
                event.map(|b| Uuid::from_slice(&b).unwrap()),
                r.get::<Option<i64>, _>(5),
            )
        })
        .collect();
    assert_eq!(rows, expected());
    let ids: Vec<u8> = sqlx::query_scalar("SELECT event_ids FROM churn_alerts")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids, alert_ids());
    let name: String = sqlx::query_scalar(
        "SELECT r.name FROM lifecycle_transitions t JOIN lifecycle_time_rules r ON r.code = t.cause_rule \
         WHERE t.customer_id = 'bob' AND t.seq = 5",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(name, "prospect_by_time");
    // The reference tables name what the build's codes mean.
    for stage in Stage::ALL {
        let name: String = sqlx::query_scalar("SELECT name FROM lifecycle_stages WHERE code = ?")
            .bind(stage.code())
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(name, stage.as_str());
    }
    for rule in all_rules() {
        let name: String =
            sqlx::query_scalar("SELECT name FROM lifecycle_time_rules WHERE code = ?")
                .bind(rule.code())
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(name, without_numbers(&rule.to_string()), "{rule:?}");
    }
    // A row with both causes, or neither, is refused.
    let both = conn
        .execute("INSERT INTO lifecycle_transitions VALUES (1, 'cy', 1, NULL, 1, 5, x'00', 1)")
        .await;
    assert!(both.is_err(), "{both:?}");
}

#[tokio::test]
async fn postgres_history_rows_are_converted_to_codes_and_ids() {
    let db = TempDatabase::create().await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (before, own) = migrations("schema/postgres", 60);
    for sql in before {
        conn.execute(sqlx::raw_sql(&sql)).await.unwrap();
    }
    conn.execute(sqlx::raw_sql(OLD_ROWS)).await.unwrap();
    conn.execute(sqlx::raw_sql(&own)).await.unwrap();

    let rows: Vec<_> = sqlx::query(READ_BACK)
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<String, _>(0),
                r.get::<i64, _>(1),
                r.get::<Option<i64>, _>(2),
                r.get::<i64, _>(3),
                r.get::<Option<Uuid>, _>(4),
                r.get::<Option<i64>, _>(5),
            )
        })
        .collect();
    assert_eq!(rows, expected());
    let ids: Vec<u8> = sqlx::query_scalar("SELECT event_ids FROM churn_alerts")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids, alert_ids());
    conn.close().await.unwrap();
    db.drop_database().await;
}
