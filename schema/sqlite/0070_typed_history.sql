-- Typed history rows: stages as codes, causes as a 16-byte event id or
-- a time-rule code, alert event ids as 16 bytes each, instead of text.
--
-- lifecycle_transitions was a third of a read-model version's bytes
-- (CDNOW master: 158,165 rows of 65 bytes, the cause alone 31 on average:
-- `rule:at_risk_after_90_days` or an event id as 36 characters), and the
-- rebuild writes every byte twice (log, then database file). The names
-- stay one join away: lifecycle_stages and lifecycle_time_rules (a rule's
-- thresholds are those of the version's rules, projection_versions.rules_json).
CREATE TABLE lifecycle_stages (
    code INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
INSERT INTO lifecycle_stages (code, name) VALUES
    (1, 'prospect'),
    (2, 'new'),
    (3, 'active'),
    (4, 'mature'),
    (5, 'at_risk'),
    (6, 'dormant'),
    (7, 'churned'),
    (8, 'reactivated');

-- 101–108: "<stage>_by_time", any other change time alone made.
CREATE TABLE lifecycle_time_rules (
    code INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
INSERT INTO lifecycle_time_rules (code, name) VALUES
    (1, 'at_risk_after_days'),
    (2, 'dormant_after_days'),
    (3, 'churned_after_days'),
    (4, 'mature_after_days_with_orders_in_days'),
    (5, 'new_ends_after_days'),
    (6, 'reactivated_ends_after_days'),
    (7, 'mature_needs_orders_in_days'),
    (101, 'prospect_by_time'),
    (102, 'new_by_time'),
    (103, 'active_by_time'),
    (104, 'mature_by_time'),
    (105, 'at_risk_by_time'),
    (106, 'dormant_by_time'),
    (107, 'churned_by_time'),
    (108, 'reactivated_by_time');

-- Every stage change: caused by an event (cause_event) or by a time rule
-- (cause_rule), never both.
CREATE TABLE lifecycle_transitions_typed (
    model_version INTEGER NOT NULL,
    customer_id   TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    from_stage    INTEGER,
    to_stage      INTEGER NOT NULL,
    at_us         INTEGER NOT NULL,
    cause_event   BLOB,
    cause_rule    INTEGER,
    PRIMARY KEY (model_version, customer_id, seq),
    CHECK ((cause_event IS NULL) <> (cause_rule IS NULL))
) WITHOUT ROWID;
INSERT INTO lifecycle_transitions_typed
    (model_version, customer_id, seq, from_stage, to_stage, at_us, cause_event, cause_rule)
SELECT model_version, customer_id, seq,
    CASE from_stage WHEN 'prospect' THEN 1 WHEN 'new' THEN 2 WHEN 'active' THEN 3 WHEN 'mature' THEN 4 WHEN 'at_risk' THEN 5 WHEN 'dormant' THEN 6 WHEN 'churned' THEN 7 WHEN 'reactivated' THEN 8 END,
    CASE to_stage WHEN 'prospect' THEN 1 WHEN 'new' THEN 2 WHEN 'active' THEN 3 WHEN 'mature' THEN 4 WHEN 'at_risk' THEN 5 WHEN 'dormant' THEN 6 WHEN 'churned' THEN 7 WHEN 'reactivated' THEN 8 END,
    at_us,
    CASE WHEN cause LIKE 'rule:%' THEN NULL ELSE unhex(replace(cause, '-', '')) END,
    CASE
        WHEN cause LIKE 'rule:at_risk_after_%' THEN 1
        WHEN cause LIKE 'rule:dormant_after_%' THEN 2
        WHEN cause LIKE 'rule:churned_after_%' THEN 3
        WHEN cause LIKE 'rule:mature_after_%' THEN 4
        WHEN cause LIKE 'rule:new_ends_after_%' THEN 5
        WHEN cause LIKE 'rule:reactivated_ends_after_%' THEN 6
        WHEN cause LIKE 'rule:mature_needs_%' THEN 7
        WHEN cause LIKE 'rule:%_by_time' THEN 100 + CASE substr(cause, 6, length(cause) - 13) WHEN 'prospect' THEN 1 WHEN 'new' THEN 2 WHEN 'active' THEN 3 WHEN 'mature' THEN 4 WHEN 'at_risk' THEN 5 WHEN 'dormant' THEN 6 WHEN 'churned' THEN 7 WHEN 'reactivated' THEN 8 END
    END
FROM lifecycle_transitions;
DROP TABLE lifecycle_transitions;
ALTER TABLE lifecycle_transitions_typed RENAME TO lifecycle_transitions;

-- Alerts: the events behind each, 16 bytes an id, end to end.
CREATE TABLE churn_alerts_typed (
    model_version INTEGER NOT NULL,
    customer_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    rule TEXT NOT NULL,
    at_us INTEGER NOT NULL,
    event_ids BLOB NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (model_version, customer_id, seq)
) WITHOUT ROWID;
INSERT INTO churn_alerts_typed (model_version, customer_id, seq, rule, at_us, event_ids, detail)
SELECT model_version, customer_id, seq, rule, at_us, unhex(replace(replace(event_ids, '-', ''), ',', '')), detail
FROM churn_alerts;
DROP TABLE churn_alerts;
ALTER TABLE churn_alerts_typed RENAME TO churn_alerts;
