//! Who is calling: the identity every request carries into the data layer.
//!
//! Handlers never decide visibility on their own; they pass the `Identity`
//! down and the data layer turns it into a scope. An identity built from a
//! Keystone token (a later issue) only needs to produce the same type.

use serde::{Deserialize, Serialize};

/// What a caller may see and do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// The cloud operator: everything.
    Admin,
    /// Reads one billing account and the projects it owns.
    AccountReader {
        /// The billing account.
        account_id: String,
    },
    /// Reads one Keystone project.
    ProjectReader {
        /// The Keystone project id.
        project_id: String,
    },
}

impl Role {
    /// The role's name as stored and shown.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::AccountReader { .. } => "account_reader",
            Role::ProjectReader { .. } => "project_reader",
        }
    }

    /// Whether this role may write (ingest, change configuration).
    pub fn can_write(&self) -> bool {
        matches!(self, Role::Admin)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The credential that authenticated the caller (an API key id).
    pub principal: String,
    /// What the caller may see and do.
    pub role: Role,
}

impl Identity {
    /// Whether the caller may see the given project's data. Account readers
    /// need the account's project list, which the billing module owns; until
    /// it answers, they see no raw project data.
    pub fn may_read_project(&self, project_id: &str) -> bool {
        match &self.role {
            Role::Admin => true,
            Role::ProjectReader { project_id: p } => p == project_id,
            Role::AccountReader { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_reader_sees_only_its_project() {
        let id = Identity {
            principal: "k1".into(),
            role: Role::ProjectReader {
                project_id: "p1".into(),
            },
        };
        assert!(id.may_read_project("p1"));
        assert!(!id.may_read_project("p2"));
        assert!(!id.role.can_write());
    }
}
