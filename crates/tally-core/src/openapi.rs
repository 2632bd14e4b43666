//! JSON schemas of the core types whose JSON form is written by hand (a
//! string for a currency or a period, any scalar for an attribute), for
//! the HTTP API's OpenAPI document. Only with the `openapi` feature.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
// utoipa derives `ComposeSchema` (which gives `PartialSchema`) for derived
// types, and containers (`Option`, `Vec`, maps) ask their items through it;
// the hand-written schemas implement it too.
use utoipa::__dev::ComposeSchema;
use utoipa::ToSchema;

use crate::billing::PeriodLabel;
use crate::money::Currency;
use crate::record::AttributeValue;

fn text(description: &str, pattern: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .examples([serde_json::json!(example)])
        .into()
}

impl ComposeSchema for Currency {
    fn compose(_: Vec<RefOr<Schema>>) -> RefOr<Schema> {
        text("An ISO 4217 alphabetic currency code.", "^[A-Z]{3}$", "EUR")
    }
}

impl ToSchema for Currency {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Currency")
    }
}

impl ComposeSchema for PeriodLabel {
    fn compose(_: Vec<RefOr<Schema>>) -> RefOr<Schema> {
        text(
            "A billing period, named by the month it starts in.",
            "^[0-9]{4}-[0-9]{2}$",
            "2026-10",
        )
    }
}

impl ToSchema for PeriodLabel {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PeriodLabel")
    }
}

impl ComposeSchema for AttributeValue {
    fn compose(_: Vec<RefOr<Schema>>) -> RefOr<Schema> {
        let of = |t: Type| ObjectBuilder::new().schema_type(t);
        OneOfBuilder::new()
            .item(of(Type::Null))
            .item(of(Type::Boolean))
            .item(of(Type::Number))
            .item(of(Type::String))
            .description(Some(
                "An attribute's value, as its producer sent it: a string, a number, a boolean or null.",
            ))
            .into()
    }
}

impl ToSchema for AttributeValue {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("AttributeValue")
    }
}
