//! Which plan prices which project when: the default plan, and the plans
//! of the billing accounts that own projects, each from an instant on.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::PricePlan;

/// The plans that price a rating run.
///
/// A project owned by a billing account with plan assignments is priced by
/// the assignment in force at the rating period's start (so a plan change
/// in the middle of a month splits the month): of those that started at or
/// before it and have not ended, the one that started last (so a bounded
/// promotion overlays a base plan). Every other project, and an account
/// with no assignment in force, is priced by the default plan.
#[derive(Debug, Clone, Default)]
pub struct PlanBook {
    default: Option<Arc<PricePlan>>,
    by_project: HashMap<String, Assignments>,
}

/// A project's plans by start instant, earliest first (shared by every
/// project of one account).
type Assignments = Arc<[PlanSpan]>;

/// One plan assignment: from an instant, until an optional end, the plan.
pub type PlanSpan = (DateTime<Utc>, Option<DateTime<Utc>>, Arc<PricePlan>);

/// An account's plan assignments, in any order.
pub type PlanStarts = Vec<PlanSpan>;

impl PlanBook {
    /// One plan for every project (or none: every line unpriced).
    pub fn single(plan: Option<Arc<PricePlan>>) -> PlanBook {
        PlanBook {
            default: plan,
            by_project: HashMap::new(),
        }
    }

    /// The default plan and, per project, its account's assignments as
    /// (from, plan) in any order.
    pub fn new(
        default: Option<Arc<PricePlan>>,
        assignments: impl IntoIterator<Item = (String, PlanStarts)>,
    ) -> PlanBook {
        PlanBook {
            default,
            by_project: assignments
                .into_iter()
                .map(|(project, mut a)| {
                    a.sort_by_key(|(from, _, _)| *from);
                    (project, a.into())
                })
                .collect(),
        }
    }

    /// The default plan.
    pub fn default_plan(&self) -> Option<&PricePlan> {
        self.default.as_deref()
    }

    /// The plan pricing `project`'s usage of the period starting at `at`
    /// (see [`PlanBook`]).
    pub fn plan_for(&self, project: &str, at: DateTime<Utc>) -> Option<&PricePlan> {
        self.shared_plan_for(project, at).map(|p| p.as_ref())
    }

    /// [`PlanBook::plan_for`], shared: what a rated line keeps of its plan
    /// without copying the plan's id and currency into every line.
    pub fn shared_plan_for(&self, project: &str, at: DateTime<Utc>) -> Option<&Arc<PricePlan>> {
        self.by_project
            .get(project)
            .and_then(|a| {
                a.iter()
                    .rev()
                    .find(|(from, to, _)| *from <= at && to.is_none_or(|t| at < t))
            })
            .map(|(_, _, p)| p)
            .or(self.default.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str) -> Arc<PricePlan> {
        Arc::new(
            PricePlan::from_toml(
                &format!(
                    "id = \"{id}\"\ncurrency = \"EUR\"\n[[versions]]\neffective_from = \"2020-01-01T00:00:00Z\"\n"
                ),
                None,
            )
            .unwrap(),
        )
    }

    #[test]
    fn the_assignment_in_force_at_the_period_start_prices_it() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let book = PlanBook::new(
            Some(plan("default")),
            [(
                "p1".to_string(),
                vec![
                    (
                        t("2026-10-15T00:00:00Z"),
                        Some(t("2026-10-20T00:00:00Z")),
                        plan("gold"),
                    ),
                    (t("2026-10-01T00:00:00Z"), None, plan("silver")),
                ],
            )],
        );
        let id = |p: &str, at: &str| book.plan_for(p, t(at)).map(|p| p.id.clone());
        assert_eq!(id("p1", "2026-09-30T23:00:00Z").as_deref(), Some("default"));
        assert_eq!(id("p1", "2026-10-01T00:00:00Z").as_deref(), Some("silver"));
        assert_eq!(id("p1", "2026-10-14T23:00:00Z").as_deref(), Some("silver"));
        assert_eq!(id("p1", "2026-10-15T00:00:00Z").as_deref(), Some("gold"));
        // The bounded promotion ends and the base plan resumes.
        assert_eq!(id("p1", "2026-10-19T23:00:00Z").as_deref(), Some("gold"));
        assert_eq!(id("p1", "2026-10-20T00:00:00Z").as_deref(), Some("silver"));
        assert_eq!(id("p2", "2026-10-15T00:00:00Z").as_deref(), Some("default"));
        assert!(
            PlanBook::single(None)
                .plan_for("p1", t("2026-10-15T00:00:00Z"))
                .is_none()
        );
    }
}
