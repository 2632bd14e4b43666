//! Coarser summary levels of the current daily cells: per project × meter
//! × day (`usage_project_days`), per project × meter × UTC month
//! (`usage_project_months`) and per meter × day over the whole cloud
//! (`usage_cloud_days`), each keeping the cells' unit, currency and
//! attributes; and per project × month with every meter together
//! (`usage_project_month_totals`, the least and greatest unit kept); and
//! per project × day with every meter together
//! (`usage_project_day_totals`, for daily charts by project or account);
//! per resource × meter × month (`usage_resource_months`, with the
//! resource's last day with usage) for a tenant's top resources.
//!
//! The resource cells (`usage_rollups`, see `cells.rs`) are per run and
//! count only through the coverage join, which keeps re-rating atomic but
//! makes every summary add up one row per resource, meter and day: about
//! three million rows for a month of 10,000 instances. Most questions
//! (a month's cost by service, by account, per day) need no resource, so
//! these levels hold only what is current, already added up.
//!
//! They are kept current through dirty days: whatever changes which cells
//! count (a rating commit, a rebuild of a run's cells) marks the UTC days
//! it touches in `usage_summary_dirty`, in the same transaction where it
//! can, and [`refresh`] recomputes exactly those days (and their months)
//! before a summary answers. Marking and refreshing take one lock (SQLite's
//! write lock; a transaction-scoped advisory lock on PostgreSQL), so a day
//! marked while a refresh runs is never lost.
//!
//! Every level is an exact sum of the cells below it: quantities and
//! amounts are kept as a whole part plus a fraction (millionths,
//! billionths), added apart so that nothing overflows 64 bits.

use chrono::DateTime;
use sqlx::Any;
use tally_core::rollup::{
    AMOUNT_SCALE, DAY_US, QUANTITY_SCALE, next_utc_month_start, utc_month_start,
};
use tally_core::summary_levels::WholeMonthLevels;
use tally_db::{Backend, Database};

use crate::job::RatingError;

/// The key of the advisory lock that serializes marking and refreshing on
/// PostgreSQL ("tallylvl" in ASCII).
const LEVELS_LOCK: i64 = 0x7461_6c6c_796c_766c;

/// Takes the levels' lock for the rest of `tx`. On SQLite a write
/// transaction (`BEGIN IMMEDIATE`) already excludes every other writer.
pub async fn lock(
    tx: &mut sqlx::Transaction<'static, Any>,
    backend: Backend,
) -> Result<(), RatingError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LEVELS_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Marks every UTC day overlapping `[from_us, to_us)` for recomputation,
/// inside `tx` (which must hold [`lock`]).
pub async fn mark_in(
    tx: &mut sqlx::Transaction<'static, Any>,
    backend: Backend,
    from_us: i64,
    to_us: i64,
) -> Result<(), RatingError> {
    let days = days_overlapping(from_us, to_us);
    for chunk in days.chunks(500) {
        let sql = format!(
            "INSERT INTO usage_summary_dirty (day_us) VALUES {} ON CONFLICT (day_us) DO NOTHING",
            tally_db::values_placeholders(backend, chunk.len(), 1)
        );
        // Only placeholders are generated into this text.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for d in chunk {
            q = q.bind(*d);
        }
        q.execute(&mut **tx).await?;
    }
    // What counts changes in this transaction: remembered summary answers
    // of the old state must not be served after it commits.
    sqlx::query("UPDATE summary_version SET version = version + 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The current value of the counter that moves whenever a summary's
/// answer may change (rated usage counted, or project ownership): the
/// key under which an answer may be remembered.
pub async fn summary_version(db: &Database) -> Result<i64, RatingError> {
    Ok(
        sqlx::query_scalar("SELECT version FROM summary_version WHERE id = 1")
            .fetch_one(&db.pool)
            .await?,
    )
}

/// Marks every UTC day overlapping `[from_us, to_us)` in a transaction of
/// its own.
pub async fn mark(db: &Database, from_us: i64, to_us: i64) -> Result<(), RatingError> {
    let mut tx = db.begin_write().await?;
    lock(&mut tx, db.backend).await?;
    mark_in(&mut tx, db.backend, from_us, to_us).await?;
    tx.commit().await?;
    Ok(())
}

/// The first microsecond of each UTC day overlapping `[from_us, to_us)`.
pub fn days_overlapping(from_us: i64, to_us: i64) -> Vec<i64> {
    let mut days = Vec::new();
    let mut d = from_us.div_euclid(DAY_US) * DAY_US;
    while d < to_us {
        days.push(d);
        d += DAY_US;
    }
    days
}

/// The first instant of the UTC month holding `day_us`, and of the next.
fn month_of(day_us: i64) -> (i64, i64) {
    let day = DateTime::from_timestamp_micros(day_us).unwrap_or_default();
    (
        utc_month_start(day).timestamp_micros(),
        next_utc_month_start(day).timestamp_micros(),
    )
}

/// The SQL of the exact sum of a value in `scale`-ths as two BIGINT
/// columns, whole units and the fraction, taken from one column in
/// `scale`-ths (`whole` = `None`: the resource cells) or from a pair
/// already split (the levels). A 64-bit sum of a month of a large cloud's
/// bytes in millionths overflows; its parts do not. Whole = Σ whole +
/// Σ fraction / 10^scale, fraction = Σ fraction mod 10^scale: both engines
/// truncate integer division toward zero and give `%` the dividend's sign,
/// so whole × 10^scale + fraction is the exact sum.
pub fn exact_sum_sql(whole: Option<&str>, fraction: &str, scale: u32) -> String {
    let s = 10i64.pow(scale);
    let (whole, fraction) = match whole {
        None => (format!("{fraction} / {s}"), format!("{fraction} % {s}")),
        Some(w) => (w.to_string(), fraction.to_string()),
    };
    format!(
        "CAST(SUM({whole}) AS BIGINT) + CAST(SUM({fraction}) AS BIGINT) / {s}, \
         CAST(SUM({fraction}) AS BIGINT) % {s}"
    )
}

/// The SQL of the quantity and amount sums of a level, from the resource
/// cells (`cells`) or from a level below (split columns).
fn sums_sql(cells: bool, prefix: &str) -> String {
    let q = if cells {
        exact_sum_sql(None, &format!("{prefix}quantity_micro"), QUANTITY_SCALE)
    } else {
        exact_sum_sql(
            Some(&format!("{prefix}quantity_whole")),
            &format!("{prefix}quantity_micro"),
            QUANTITY_SCALE,
        )
    };
    let a = if cells {
        exact_sum_sql(None, &format!("{prefix}amount_nano"), AMOUNT_SCALE)
    } else {
        exact_sum_sql(
            Some(&format!("{prefix}amount_whole")),
            &format!("{prefix}amount_nano"),
            AMOUNT_SCALE,
        )
    };
    format!(
        "{q}, {a}, CAST(SUM({prefix}line_count) AS BIGINT), CAST(SUM({prefix}error_count) AS BIGINT)"
    )
}

const LEVEL_COLUMNS: &str =
    "quantity_whole, quantity_micro, amount_whole, amount_nano, line_count, error_count";

/// Recomputes the per-project-and-day totals and the cloud's days from
/// `usage_project_days`, for the days `days` selects (an SQL condition on
/// `day_us`).
async fn derive_day_levels(
    tx: &mut sqlx::Transaction<'static, Any>,
    days: &str,
) -> Result<(), RatingError> {
    let sums = sums_sql(false, "");
    for sql in [
        format!("DELETE FROM usage_project_day_totals WHERE {days}"),
        format!(
            "INSERT INTO usage_project_day_totals (day_us, project_id, currency, unit_min, unit_max, {LEVEL_COLUMNS}) \
             SELECT day_us, project_id, currency, MIN(unit), MAX(unit), {sums} \
             FROM usage_project_days WHERE {days} GROUP BY day_us, project_id, currency"
        ),
        format!("DELETE FROM usage_cloud_days WHERE {days}"),
        format!(
            "INSERT INTO usage_cloud_days (day_us, meter, unit, currency, attributes, {LEVEL_COLUMNS}) \
             SELECT day_us, meter, unit, currency, attributes, {sums} \
             FROM usage_project_days WHERE {days} GROUP BY day_us, meter, unit, currency, attributes"
        ),
    ] {
        // Only numbers and fixed names are generated into this text.
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Recomputes the project-days in `[first, end)` that `days` (an SQL
/// condition on `day_us`) selects, from the cells that count.
async fn project_days_from_cells(
    tx: &mut sqlx::Transaction<'static, Any>,
    first: i64,
    end: i64,
    days: &str,
) -> Result<(), RatingError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM usage_project_days WHERE day_us >= {first} AND day_us < {end} AND {days}"
    )))
    .execute(&mut **tx)
    .await?;
    // The cells that count are those whose run's coverage holds them (the
    // same join as every resource-level summary).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO usage_project_days (day_us, project_id, meter, unit, currency, attributes, {LEVEL_COLUMNS}) \
         SELECT day_us, project_id, meter, unit, currency, attributes, {sums} FROM \
         (SELECT (u.from_us / {DAY_US}) * {DAY_US} AS day_us, u.* FROM usage_rollups u JOIN rated_coverage c \
          ON c.run_id = u.run_id AND u.from_us >= c.from_us AND u.to_us <= c.to_us \
          WHERE u.from_us >= {first} AND u.from_us < {end}) counted \
         WHERE {days} \
         GROUP BY day_us, project_id, meter, unit, currency, attributes",
        sums = sums_sql(true, ""),
    )))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Recomputes a month's per-project levels from `usage_project_days`.
async fn derive_month_levels(
    tx: &mut sqlx::Transaction<'static, Any>,
    month: i64,
    next: i64,
) -> Result<(), RatingError> {
    let sums = sums_sql(false, "");
    for sql in [
        format!("DELETE FROM usage_project_months WHERE month_us = {month}"),
        format!(
            "INSERT INTO usage_project_months (month_us, project_id, meter, unit, currency, attributes, {LEVEL_COLUMNS}) \
             SELECT {month}, project_id, meter, unit, currency, attributes, {sums} \
             FROM usage_project_days WHERE day_us >= {month} AND day_us < {next} \
             GROUP BY project_id, meter, unit, currency, attributes"
        ),
        format!("DELETE FROM usage_project_month_totals WHERE month_us = {month}"),
        format!(
            "INSERT INTO usage_project_month_totals (month_us, project_id, currency, unit_min, unit_max, {LEVEL_COLUMNS}) \
             SELECT {month}, project_id, currency, MIN(unit), MAX(unit), {sums} \
             FROM usage_project_months WHERE month_us = {month} GROUP BY project_id, currency"
        ),
    ] {
        // Only numbers and fixed names are generated into this text.
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Recomputes the levels of every dirty day (and of the months holding
/// them). Returns how many days were recomputed: 0 when nothing was dirty,
/// which costs one indexed read.
pub async fn refresh(db: &Database) -> Result<usize, RatingError> {
    let any: Option<i64> = sqlx::query_scalar("SELECT day_us FROM usage_summary_dirty LIMIT 1")
        .fetch_optional(&db.pool)
        .await?;
    if any.is_none() {
        return Ok(0);
    }
    let mut tx = db.begin_write().await?;
    lock(&mut tx, db.backend).await?;
    // Read again under the lock: another refresh may have done the work.
    let days: Vec<i64> =
        sqlx::query_scalar("SELECT day_us FROM usage_summary_dirty ORDER BY day_us")
            .fetch_all(&mut *tx)
            .await?;
    let (Some(&first), Some(&last)) = (days.first(), days.last()) else {
        return Ok(0);
    };
    let dirty = "day_us IN (SELECT day_us FROM usage_summary_dirty)";
    let cell_sums = sums_sql(true, "u.");

    project_days_from_cells(&mut tx, first, last + DAY_US, dirty).await?;
    derive_day_levels(&mut tx, dirty).await?;

    let mut months: Vec<(i64, i64)> = days.iter().map(|d| month_of(*d)).collect();
    months.dedup();
    for (month, next) in months {
        derive_month_levels(&mut tx, month, next).await?;
        sqlx::query("DELETE FROM usage_resource_months WHERE month_us = $1")
            .bind(month)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO usage_resource_months (month_us, project_id, resource_id, meter, unit, currency, attributes, last_day_us, {LEVEL_COLUMNS}) \
             SELECT {month}, u.project_id, u.resource_id, u.meter, u.unit, u.currency, u.attributes, \
             MAX((u.from_us / {DAY_US}) * {DAY_US}), {cell_sums} \
             FROM usage_rollups u JOIN rated_coverage c \
             ON c.run_id = u.run_id AND u.from_us >= c.from_us AND u.to_us <= c.to_us \
             WHERE u.from_us >= {month} AND u.from_us < {next} \
             GROUP BY u.project_id, u.resource_id, u.meter, u.unit, u.currency, u.attributes",
        )))
        .execute(&mut *tx)
        .await?;
    }

    sqlx::query("DELETE FROM usage_summary_dirty WHERE day_us >= $1 AND day_us <= $2")
        .bind(first)
        .bind(last)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(days.len())
}

/// Rows per insert statement of level rows written from memory (SQLite
/// caps a statement's variables at 32,766; PostgreSQL at 65,535).
const LEVEL_ROWS_PER_STATEMENT: usize = 500;

/// Writes the levels of the whole months a committing run covers inside
/// the commit's `tx` (which must hold [`lock`] and have given the run the
/// months' coverage): the resource months from the sums the run made of
/// its own cells, everything else grouped as [`refresh`] groups it. Those
/// months count only the run's cells; their days are no longer dirty.
/// Days of the run outside whole months must be marked with [`mark_in`]
/// as before. Returns how many rows it wrote from memory.
pub async fn write_whole_months(
    tx: &mut sqlx::Transaction<'static, Any>,
    backend: Backend,
    levels: &WholeMonthLevels,
) -> Result<usize, RatingError> {
    let overflow = |e: tally_core::summary_levels::LevelOverflow| RatingError::Files(e.to_string());
    let resource_months = levels.resource_months().map_err(overflow)?;
    for &(month, next) in levels.months() {
        let in_month = format!("day_us >= {month} AND day_us < {next}");
        // Project-days are fewer than cells but still many (a third of
        // them in a month of 2,800 instances); grouping the run's cells
        // inside the database writes them faster than binding each row.
        project_days_from_cells(tx, month, next, "TRUE").await?;
        derive_day_levels(tx, &in_month).await?;
        derive_month_levels(tx, month, next).await?;

        sqlx::query("DELETE FROM usage_resource_months WHERE month_us = $1")
            .bind(month)
            .execute(&mut **tx)
            .await?;
        let resources: Vec<_> = resource_months
            .iter()
            .filter(|(k, _, _)| k.from_us == month)
            .collect();
        for chunk in resources.chunks(LEVEL_ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO usage_resource_months (month_us, project_id, resource_id, meter, unit, currency, attributes, last_day_us, {LEVEL_COLUMNS}) VALUES {}",
                tally_db::values_placeholders(backend, chunk.len(), 14)
            );
            // Only placeholders are generated into this text.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (k, v, last_day) in chunk {
                q = q
                    .bind(k.from_us)
                    .bind(&k.project_id)
                    .bind(&k.resource_id)
                    .bind(&k.meter)
                    .bind(&k.unit)
                    .bind(&k.currency)
                    .bind(&k.attributes)
                    .bind(*last_day)
                    .bind(v.quantity.whole)
                    .bind(v.quantity.fraction)
                    .bind(v.amount.whole)
                    .bind(v.amount.fraction)
                    .bind(v.line_count)
                    .bind(v.error_count);
            }
            q.execute(&mut **tx).await?;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM usage_summary_dirty WHERE {in_month}"
        )))
        .execute(&mut **tx)
        .await?;
    }
    Ok(resource_months.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use tally_core::rollup::{CellKey, DailyCell};

    /// Every row of every level table, as text, in order.
    async fn dump_levels(db: &Database) -> Vec<String> {
        let mut rows = Vec::new();
        for (table, key) in [
            (
                "usage_project_days",
                "day_us, project_id, meter, unit, currency, attributes",
            ),
            (
                "usage_project_day_totals",
                "day_us, project_id, currency, unit_min, unit_max",
            ),
            (
                "usage_cloud_days",
                "day_us, meter, unit, currency, attributes",
            ),
            (
                "usage_project_months",
                "month_us, project_id, meter, unit, currency, attributes",
            ),
            (
                "usage_project_month_totals",
                "month_us, project_id, currency, unit_min, unit_max",
            ),
            (
                "usage_resource_months",
                "month_us, project_id, resource_id, meter, unit, currency, attributes, last_day_us",
            ),
        ] {
            let sql = format!(
                "SELECT {key}, quantity_whole, quantity_micro, amount_whole, amount_nano, line_count, error_count \
                 FROM {table} ORDER BY {key}"
            );
            let got: Vec<sqlx::any::AnyRow> = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&db.pool)
                .await
                .unwrap();
            use sqlx::{Column, Row};
            for r in got {
                let mut text = vec![table.to_string()];
                for (i, c) in r.columns().iter().enumerate() {
                    let v = r
                        .try_get::<i64, _>(i)
                        .map(|v| v.to_string())
                        .or_else(|_| r.try_get::<String, _>(i))
                        .unwrap();
                    text.push(format!("{}={v}", c.name()));
                }
                rows.push(text.join(" "));
            }
        }
        rows
    }

    /// A month of cells that exercise the sums: fractions that carry,
    /// negative amounts (credits), a key written in two parts, two
    /// projects, two resources, two attribute sets.
    fn october_cells() -> Vec<DailyCell> {
        let day = |d: u32| {
            Utc.with_ymd_and_hms(2026, 10, d, 0, 0, 0)
                .unwrap()
                .timestamp_micros()
        };
        let mut cells = Vec::new();
        for d in 1..=31u32 {
            for (i, (project, resource, attributes)) in [
                ("p1", "vm1", r#"{"flavor":"m1.small"}"#),
                ("p1", "vm2", r#"{"flavor":"m1.large"}"#),
                ("p2", "vm3", r#"{"flavor":"m1.small"}"#),
                ("p2", "vm3", r#"{"flavor":"m1.large"}"#),
            ]
            .into_iter()
            .enumerate()
            {
                let n = i64::from(d) * 7 + i as i64;
                cells.push(DailyCell {
                    key: CellKey {
                        from_us: day(d),
                        to_us: day(d) + DAY_US,
                        project_id: project.into(),
                        resource_id: resource.into(),
                        meter: "instance".into(),
                        unit: "hour".into(),
                        currency: "EUR".into(),
                        attributes: attributes.into(),
                    },
                    quantity_micro: 23_999_999 + n * 333_333,
                    amount_nano: if n % 5 == 0 {
                        -1_234_567_891
                    } else {
                        n * 987_654_321
                    },
                    line_count: 24,
                    error_count: n % 2,
                });
            }
        }
        // One key in two parts, as two flushes of a partition write it.
        let mut part = cells[5].clone();
        part.amount_nano = 999_999_999;
        cells.push(part);
        cells
    }

    /// The levels a run adds up from its own cells are the rows the SQL
    /// recomputation makes from the stored cells, to the last digit.
    async fn whole_month_levels_equal_the_recomputed_ones(url: String) {
        let db = Database::open(&url).await.unwrap();
        let (from, to) = (
            Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0)
                .unwrap()
                .timestamp_micros(),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
                .unwrap()
                .timestamp_micros(),
        );
        let cells = october_cells();
        sqlx::query(
            "INSERT INTO rating_runs (run_id, from_us, to_us, period_seconds, plan_id, status, started_at_us, currency) \
             VALUES ('r1', $1, $2, 3600, '', 'complete', $1, 'EUR')",
        )
        .bind(from)
        .bind(to)
        .execute(&db.pool)
        .await
        .unwrap();
        crate::cells::insert(&db, "r1".to_string(), cells.clone())
            .await
            .unwrap();
        sqlx::query("INSERT INTO rated_coverage (run_id, from_us, to_us) VALUES ('r1', $1, $2)")
            .bind(from)
            .bind(to)
            .execute(&db.pool)
            .await
            .unwrap();
        // A stale row of an older run, which both paths must replace.
        sqlx::query(
            "INSERT INTO usage_project_days (day_us, project_id, meter, unit, currency, attributes, \
             quantity_whole, quantity_micro, amount_whole, amount_nano, line_count, error_count) \
             VALUES ($1, 'p9', 'instance', 'hour', 'EUR', '{}', 1, 0, 1, 0, 1, 0)",
        )
        .bind(from)
        .execute(&db.pool)
        .await
        .unwrap();
        mark(&db, from, to).await.unwrap();
        assert_eq!(refresh(&db).await.unwrap(), 31);
        let recomputed = dump_levels(&db).await;
        assert!(recomputed.len() > 31 * 3, "{recomputed:?}");
        assert!(!recomputed.iter().any(|r| r.contains("p9")));

        let mut levels = WholeMonthLevels::new(from, to, 10_000);
        let mut other = WholeMonthLevels::new(from, to, 10_000);
        for (i, c) in cells.iter().enumerate() {
            if i % 3 == 0 {
                other.add(c)
            } else {
                levels.add(c)
            }
        }
        levels.merge(other);
        let mut tx = db.begin_write().await.unwrap();
        lock(&mut tx, db.backend).await.unwrap();
        // Stale again, and a dirty day: both are the month's, so both go.
        sqlx::query("UPDATE usage_project_days SET amount_whole = amount_whole + 1")
            .execute(&mut *tx)
            .await
            .unwrap();
        mark_in(&mut tx, db.backend, from, from + DAY_US)
            .await
            .unwrap();
        write_whole_months(&mut tx, db.backend, &levels)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(dump_levels(&db).await, recomputed);
        assert_eq!(refresh(&db).await.unwrap(), 0, "the month's days are clean");
    }

    #[tokio::test]
    async fn whole_month_levels_equal_the_recomputed_ones_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        whole_month_levels_equal_the_recomputed_ones(Database::sqlite_url_in(dir.path())).await;
    }

    #[tokio::test]
    async fn whole_month_levels_equal_the_recomputed_ones_on_postgres() {
        whole_month_levels_equal_the_recomputed_ones(tally_db::testing::fresh_postgres_url(
            "whole_month_levels",
        ))
        .await;
    }

    #[test]
    fn days_overlapping_a_range_include_partial_days() {
        let d = DAY_US;
        assert_eq!(days_overlapping(0, d), vec![0]);
        assert_eq!(days_overlapping(d / 2, d + 1), vec![0, d]);
        assert_eq!(days_overlapping(d, d), Vec::<i64>::new());
        assert_eq!(days_overlapping(3 * d - 1, 3 * d), vec![2 * d]);
    }

    #[test]
    fn a_day_belongs_to_its_calendar_month() {
        let us = |y, m, d| {
            Utc.with_ymd_and_hms(y, m, d, 0, 0, 0)
                .unwrap()
                .timestamp_micros()
        };
        assert_eq!(
            month_of(us(2026, 10, 31)),
            (us(2026, 10, 1), us(2026, 11, 1))
        );
        assert_eq!(month_of(us(2026, 12, 1)), (us(2026, 12, 1), us(2027, 1, 1)));
        assert_eq!(month_of(us(2024, 2, 29)), (us(2024, 2, 1), us(2024, 3, 1)));
    }
}
