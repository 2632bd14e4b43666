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
    let dirty = "SELECT day_us FROM usage_summary_dirty";
    let q = |w: Option<&str>, f: &str| exact_sum_sql(w, f, QUANTITY_SCALE);
    let a = |w: Option<&str>, f: &str| exact_sum_sql(w, f, AMOUNT_SCALE);
    let columns =
        "quantity_whole, quantity_micro, amount_whole, amount_nano, line_count, error_count";
    let counts = "CAST(SUM(line_count) AS BIGINT), CAST(SUM(error_count) AS BIGINT)";

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM usage_project_days WHERE day_us IN ({dirty})"
    )))
    .execute(&mut *tx)
    .await?;
    // The cells that count are those whose run's coverage holds them (the
    // same join as every resource-level summary).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO usage_project_days (day_us, project_id, meter, unit, currency, attributes, {columns}) \
         SELECT (u.from_us / {DAY_US}) * {DAY_US}, u.project_id, u.meter, u.unit, u.currency, u.attributes, \
         {quantity}, {amount}, CAST(SUM(u.line_count) AS BIGINT), CAST(SUM(u.error_count) AS BIGINT) \
         FROM usage_rollups u JOIN rated_coverage c \
         ON c.run_id = u.run_id AND u.from_us >= c.from_us AND u.to_us <= c.to_us \
         WHERE u.from_us >= {first} AND u.from_us < {end} \
         AND (u.from_us / {DAY_US}) * {DAY_US} IN ({dirty}) \
         GROUP BY (u.from_us / {DAY_US}) * {DAY_US}, u.project_id, u.meter, u.unit, u.currency, u.attributes",
        quantity = q(None, "u.quantity_micro"),
        amount = a(None, "u.amount_nano"),
        end = last + DAY_US,
    )))
    .execute(&mut *tx)
    .await?;

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM usage_project_day_totals WHERE day_us IN ({dirty})"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO usage_project_day_totals (day_us, project_id, currency, unit_min, unit_max, {columns}) \
         SELECT day_us, project_id, currency, MIN(unit), MAX(unit), {quantity}, {amount}, {counts} \
         FROM usage_project_days WHERE day_us IN ({dirty}) \
         GROUP BY day_us, project_id, currency",
        quantity = q(Some("quantity_whole"), "quantity_micro"),
        amount = a(Some("amount_whole"), "amount_nano"),
    )))
    .execute(&mut *tx)
    .await?;

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM usage_cloud_days WHERE day_us IN ({dirty})"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO usage_cloud_days (day_us, meter, unit, currency, attributes, {columns}) \
         SELECT day_us, meter, unit, currency, attributes, {quantity}, {amount}, {counts} \
         FROM usage_project_days WHERE day_us IN ({dirty}) \
         GROUP BY day_us, meter, unit, currency, attributes",
        quantity = q(Some("quantity_whole"), "quantity_micro"),
        amount = a(Some("amount_whole"), "amount_nano"),
    )))
    .execute(&mut *tx)
    .await?;

    let mut months: Vec<(i64, i64)> = days.iter().map(|d| month_of(*d)).collect();
    months.dedup();
    for (month, next) in months {
        sqlx::query("DELETE FROM usage_project_months WHERE month_us = $1")
            .bind(month)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO usage_project_months (month_us, project_id, meter, unit, currency, attributes, {columns}) \
             SELECT {month}, project_id, meter, unit, currency, attributes, {quantity}, {amount}, {counts} \
             FROM usage_project_days WHERE day_us >= {month} AND day_us < {next} \
             GROUP BY project_id, meter, unit, currency, attributes",
            quantity = q(Some("quantity_whole"), "quantity_micro"),
            amount = a(Some("amount_whole"), "amount_nano"),
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM usage_resource_months WHERE month_us = $1")
            .bind(month)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO usage_resource_months (month_us, project_id, resource_id, meter, unit, currency, attributes, last_day_us, {columns}) \
             SELECT {month}, u.project_id, u.resource_id, u.meter, u.unit, u.currency, u.attributes, \
             MAX((u.from_us / {DAY_US}) * {DAY_US}), {quantity}, {amount}, \
             CAST(SUM(u.line_count) AS BIGINT), CAST(SUM(u.error_count) AS BIGINT) \
             FROM usage_rollups u JOIN rated_coverage c \
             ON c.run_id = u.run_id AND u.from_us >= c.from_us AND u.to_us <= c.to_us \
             WHERE u.from_us >= {month} AND u.from_us < {next} \
             GROUP BY u.project_id, u.resource_id, u.meter, u.unit, u.currency, u.attributes",
            quantity = q(None, "u.quantity_micro"),
            amount = a(None, "u.amount_nano"),
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM usage_project_month_totals WHERE month_us = $1")
            .bind(month)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO usage_project_month_totals (month_us, project_id, currency, unit_min, unit_max, {columns}) \
             SELECT {month}, project_id, currency, MIN(unit), MAX(unit), {quantity}, {amount}, {counts} \
             FROM usage_project_months WHERE month_us = {month} \
             GROUP BY project_id, currency",
            quantity = q(Some("quantity_whole"), "quantity_micro"),
            amount = a(Some("amount_whole"), "amount_nano"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

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
