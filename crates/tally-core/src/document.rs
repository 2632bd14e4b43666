//! The error of a configuration document refused as a whole.

/// A document (price plan, meter definitions, CloudKitty listing) that
/// cannot be used: nothing of it is applied, and the message says where and
/// what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The text does not parse or does not fit the format (unknown field,
    /// missing field, wrong type); the message carries the line and column.
    #[error("{0}")]
    Syntax(String),
    /// A parsed document breaks a rule of its format.
    #[error("{path}: {message}")]
    Invalid {
        /// Where, as a path such as `versions[1].rules[0].charge`.
        path: String,
        /// What to fix.
        message: String,
    },
}
