//! Pricing math: how one quantity of one meter becomes an amount.
//!
//! This is the price module's arithmetic, kept pure so that the rating
//! engine, instant quotes and plan simulation all compute money the same
//! way. Amounts are exact decimals at full precision: nothing here rounds
//! (rounding to a currency's minor unit happens later, at documented points).
//!
//! A [`PriceRule`] prices the quantity of one rating period:
//! 1. the free allowance is taken off first (never below zero);
//! 2. the [`Charge`] prices what remains;
//! 3. the minimum charge, if any, lifts the amount to at least that much.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Errors of pricing and of rule validation. Each says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// A tier list is empty.
    #[error("a tiered charge needs at least one tier")]
    NoTiers,
    /// Tier bounds are not strictly increasing positive numbers.
    #[error(
        "tier {index}: upper bound {bound} must be greater than the previous bound {previous} (bounds are positive and strictly increasing)"
    )]
    UnorderedTiers {
        /// Zero-based tier position.
        index: usize,
        /// Its bound.
        bound: Decimal,
        /// The bound before it (0 for the first tier).
        previous: Decimal,
    },
    /// Only the last tier may be unbounded, and it must be.
    #[error("tier {index}: only the last tier is unbounded (omit `up_to` there and only there)")]
    UnboundedTier {
        /// Zero-based tier position.
        index: usize,
    },
    /// A package size of zero or less.
    #[error("package size must be greater than zero, got {0}")]
    BadPackageSize(Decimal),
    /// A free allowance below zero.
    #[error("free allowance must not be negative, got {0}")]
    NegativeAllowance(Decimal),
    /// Tiers and packages count units used, which cannot be negative.
    #[error("{0} pricing needs a non-negative quantity, got {1}")]
    NegativeQuantity(&'static str, Decimal),
    /// The result does not fit a decimal.
    #[error("amount overflow while pricing quantity {0}")]
    Overflow(Decimal),
}

/// One tier of a tiered charge: units up to `up_to` (exclusive of the
/// previous tier's bound, inclusive of this one) cost `unit_price` each, and
/// reaching the tier adds `flat_fee` once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Tier {
    /// Upper bound of the tier; `None` for the last, unbounded tier.
    pub up_to: Option<Decimal>,
    /// Price of each unit in the tier.
    pub unit_price: Decimal,
    /// Charged once when any quantity falls in the tier.
    #[serde(default)]
    pub flat_fee: Decimal,
}

/// How a quantity is charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Charge {
    /// Every unit at one price.
    PerUnit {
        /// Price of one unit.
        unit_price: Decimal,
    },
    /// A fixed amount per period, whatever the quantity.
    Flat {
        /// The amount.
        amount: Decimal,
    },
    /// Each tier prices the units that fall within it.
    Graduated {
        /// Tiers in increasing order of bound.
        tiers: Vec<Tier>,
    },
    /// The tier the total quantity reaches prices every unit.
    Volume {
        /// Tiers in increasing order of bound.
        tiers: Vec<Tier>,
    },
    /// Whole blocks of `size` units, the last block rounded up.
    Package {
        /// Units per block.
        size: Decimal,
        /// Price of one block.
        price: Decimal,
    },
}

/// A charge with its free allowance and minimum, for one rating period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PriceRule {
    /// How the billable quantity is charged.
    pub charge: Charge,
    /// Units per period that cost nothing, taken off first.
    #[serde(default)]
    pub free_allowance: Decimal,
    /// The least the period costs, when set.
    #[serde(default)]
    pub minimum: Option<Decimal>,
}

/// What one tier contributed to an amount (for explaining a line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierCharge {
    /// Zero-based tier position.
    pub tier: usize,
    /// Units priced in this tier.
    pub quantity: Decimal,
    /// Their price per unit.
    pub unit_price: Decimal,
    /// Units × price, plus the tier's flat fee.
    pub amount: Decimal,
}

/// The result of pricing a quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Priced {
    /// Quantity after the free allowance.
    pub billable_quantity: Decimal,
    /// The amount at full precision, minimum applied.
    pub amount: Decimal,
    /// Per-tier contributions, for tiered charges.
    pub tiers: Vec<TierCharge>,
    /// Whether the minimum charge set the amount.
    pub minimum_applied: bool,
}

fn validate_tiers(tiers: &[Tier]) -> Result<(), PricingError> {
    if tiers.is_empty() {
        return Err(PricingError::NoTiers);
    }
    let mut previous = Decimal::ZERO;
    for (index, t) in tiers.iter().enumerate() {
        let last = index + 1 == tiers.len();
        match t.up_to {
            None if !last => return Err(PricingError::UnboundedTier { index }),
            Some(_) if last => return Err(PricingError::UnboundedTier { index }),
            Some(bound) if bound <= previous => {
                return Err(PricingError::UnorderedTiers {
                    index,
                    bound,
                    previous,
                });
            }
            Some(bound) => previous = bound,
            None => {}
        }
    }
    Ok(())
}

impl PriceRule {
    /// A rule with only a charge.
    pub fn new(charge: Charge) -> PriceRule {
        PriceRule {
            charge,
            free_allowance: Decimal::ZERO,
            minimum: None,
        }
    }

    /// Checks the rule's shape: tier order, package size, allowance.
    pub fn validate(&self) -> Result<(), PricingError> {
        if self.free_allowance < Decimal::ZERO {
            return Err(PricingError::NegativeAllowance(self.free_allowance));
        }
        match &self.charge {
            Charge::Graduated { tiers } | Charge::Volume { tiers } => validate_tiers(tiers),
            Charge::Package { size, .. } if *size <= Decimal::ZERO => {
                Err(PricingError::BadPackageSize(*size))
            }
            _ => Ok(()),
        }
    }

    /// Prices the quantity of one period.
    pub fn price(&self, quantity: Decimal) -> Result<Priced, PricingError> {
        self.validate()?;
        let overflow = || PricingError::Overflow(quantity);
        let billable = if quantity > Decimal::ZERO {
            (quantity - self.free_allowance).max(Decimal::ZERO)
        } else {
            quantity
        };
        let mut tiers_out = Vec::new();
        let mut amount = match &self.charge {
            Charge::PerUnit { unit_price } => {
                billable.checked_mul(*unit_price).ok_or_else(overflow)?
            }
            Charge::Flat { amount } => *amount,
            Charge::Graduated { tiers } => {
                if billable < Decimal::ZERO {
                    return Err(PricingError::NegativeQuantity("graduated", billable));
                }
                let mut total = Decimal::ZERO;
                let mut lower = Decimal::ZERO;
                for (i, t) in tiers.iter().enumerate() {
                    if billable <= lower {
                        break;
                    }
                    let upper = t.up_to.map_or(billable, |u| u.min(billable));
                    let units = (upper - lower).max(Decimal::ZERO);
                    if units.is_zero() {
                        break;
                    }
                    let part = units
                        .checked_mul(t.unit_price)
                        .and_then(|p| p.checked_add(t.flat_fee))
                        .ok_or_else(overflow)?;
                    total = total.checked_add(part).ok_or_else(overflow)?;
                    tiers_out.push(TierCharge {
                        tier: i,
                        quantity: units,
                        unit_price: t.unit_price,
                        amount: part,
                    });
                    match t.up_to {
                        Some(u) => lower = u,
                        None => break,
                    }
                }
                total
            }
            Charge::Volume { tiers } => {
                if billable < Decimal::ZERO {
                    return Err(PricingError::NegativeQuantity("volume", billable));
                }
                if billable.is_zero() {
                    Decimal::ZERO
                } else {
                    let (i, t) = tiers
                        .iter()
                        .enumerate()
                        .find(|(_, t)| t.up_to.is_none_or(|u| billable <= u))
                        .expect("validated: the last tier is unbounded");
                    let part = billable
                        .checked_mul(t.unit_price)
                        .and_then(|p| p.checked_add(t.flat_fee))
                        .ok_or_else(overflow)?;
                    tiers_out.push(TierCharge {
                        tier: i,
                        quantity: billable,
                        unit_price: t.unit_price,
                        amount: part,
                    });
                    part
                }
            }
            Charge::Package { size, price } => {
                if billable < Decimal::ZERO {
                    return Err(PricingError::NegativeQuantity("package", billable));
                }
                let blocks = (billable / *size).ceil();
                blocks.checked_mul(*price).ok_or_else(overflow)?
            }
        };
        let mut minimum_applied = false;
        if let Some(min) = self.minimum
            && amount < min
        {
            amount = min;
            minimum_applied = true;
        }
        Ok(Priced {
            billable_quantity: billable,
            amount,
            tiers: tiers_out,
            minimum_applied,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn tier(up_to: Option<&str>, price: &str) -> Tier {
        Tier {
            up_to: up_to.map(d),
            unit_price: d(price),
            flat_fee: Decimal::ZERO,
        }
    }

    /// 0–100 GiB at 0.10, 100–500 at 0.08, above 500 at 0.05.
    fn storage_tiers() -> Vec<Tier> {
        vec![
            tier(Some("100"), "0.10"),
            tier(Some("500"), "0.08"),
            tier(None, "0.05"),
        ]
    }

    #[test]
    fn per_unit_with_allowance_and_minimum() {
        let mut rule = PriceRule::new(Charge::PerUnit {
            unit_price: d("0.0125"),
        });
        // 730 instance-hours at 0.0125 = 9.125
        assert_eq!(rule.price(d("730")).unwrap().amount, d("9.125"));
        rule.free_allowance = d("30");
        // (730 - 30) × 0.0125 = 8.75
        assert_eq!(rule.price(d("730")).unwrap().amount, d("8.75"));
        rule.minimum = Some(d("10"));
        let p = rule.price(d("730")).unwrap();
        assert_eq!(p.amount, d("10"));
        assert!(p.minimum_applied);
        // Allowance larger than usage: nothing billable, minimum still applies.
        let p = rule.price(d("12")).unwrap();
        assert_eq!(p.billable_quantity, Decimal::ZERO);
        assert_eq!(p.amount, d("10"));
    }

    #[test]
    fn graduated_prices_each_tier_separately() {
        let rule = PriceRule::new(Charge::Graduated {
            tiers: storage_tiers(),
        });
        // 100 × 0.10 + 400 × 0.08 + 100 × 0.05 = 10 + 32 + 5 = 47
        let p = rule.price(d("600")).unwrap();
        assert_eq!(p.amount, d("47"));
        assert_eq!(p.tiers.len(), 3);
        assert_eq!(p.tiers[1].quantity, d("400"));
        // Exactly on a bound: 100 × 0.10 = 10, nothing in tier 2.
        let p = rule.price(d("100")).unwrap();
        assert_eq!(p.amount, d("10"));
        assert_eq!(p.tiers.len(), 1);
        // 150.5 → 10 + 50.5 × 0.08 = 14.04
        assert_eq!(rule.price(d("150.5")).unwrap().amount, d("14.04"));
        assert_eq!(rule.price(Decimal::ZERO).unwrap().amount, Decimal::ZERO);
    }

    #[test]
    fn volume_prices_every_unit_at_the_tier_reached() {
        let rule = PriceRule::new(Charge::Volume {
            tiers: storage_tiers(),
        });
        assert_eq!(rule.price(d("600")).unwrap().amount, d("30")); // 600 × 0.05
        assert_eq!(rule.price(d("500")).unwrap().amount, d("40")); // 500 × 0.08 (bound inclusive)
        assert_eq!(rule.price(d("100")).unwrap().amount, d("10")); // 100 × 0.10
        assert_eq!(rule.price(d("100.01")).unwrap().amount, d("8.0008"));
    }

    #[test]
    fn tier_flat_fees_are_charged_once_per_tier_reached() {
        let mut tiers = storage_tiers();
        tiers[1].flat_fee = d("2");
        let g = PriceRule::new(Charge::Graduated {
            tiers: tiers.clone(),
        });
        assert_eq!(g.price(d("50")).unwrap().amount, d("5"));
        assert_eq!(g.price(d("150")).unwrap().amount, d("16")); // 10 + 4 + 2
        let v = PriceRule::new(Charge::Volume { tiers });
        assert_eq!(v.price(d("150")).unwrap().amount, d("14")); // 12 + 2
    }

    #[test]
    fn package_rounds_blocks_up() {
        let rule = PriceRule::new(Charge::Package {
            size: d("1000"),
            price: d("0.40"),
        });
        assert_eq!(rule.price(d("1")).unwrap().amount, d("0.40"));
        assert_eq!(rule.price(d("1000")).unwrap().amount, d("0.40"));
        assert_eq!(rule.price(d("1000.5")).unwrap().amount, d("0.80"));
        assert_eq!(rule.price(Decimal::ZERO).unwrap().amount, Decimal::ZERO);
    }

    #[test]
    fn flat_ignores_quantity() {
        let rule = PriceRule::new(Charge::Flat { amount: d("4.99") });
        assert_eq!(rule.price(Decimal::ZERO).unwrap().amount, d("4.99"));
        assert_eq!(rule.price(d("1e6")).unwrap().amount, d("4.99"));
    }

    #[test]
    fn bad_rules_say_what_to_fix() {
        let unordered = PriceRule::new(Charge::Graduated {
            tiers: vec![
                tier(Some("100"), "1"),
                tier(Some("50"), "1"),
                tier(None, "1"),
            ],
        });
        let e = unordered.validate().unwrap_err();
        assert!(e.to_string().contains("tier 1"), "{e}");
        let open_middle = PriceRule::new(Charge::Volume {
            tiers: vec![tier(None, "1"), tier(None, "1")],
        });
        assert!(matches!(
            open_middle.validate(),
            Err(PricingError::UnboundedTier { index: 0 })
        ));
        let closed_end = PriceRule::new(Charge::Volume {
            tiers: vec![tier(Some("5"), "1")],
        });
        assert!(matches!(
            closed_end.validate(),
            Err(PricingError::UnboundedTier { index: 0 })
        ));
        let negative_bound = PriceRule::new(Charge::Graduated {
            tiers: vec![tier(Some("-1"), "1"), tier(None, "1")],
        });
        assert!(negative_bound.validate().is_err());
        let zero_package = PriceRule::new(Charge::Package {
            size: Decimal::ZERO,
            price: d("1"),
        });
        assert_eq!(
            zero_package.validate(),
            Err(PricingError::BadPackageSize(Decimal::ZERO))
        );
        let tiers = PriceRule::new(Charge::Graduated {
            tiers: storage_tiers(),
        });
        assert!(matches!(
            tiers.price(d("-1")),
            Err(PricingError::NegativeQuantity("graduated", _))
        ));
        // Per-unit accepts negative quantities: corrections credit back.
        let unit = PriceRule::new(Charge::PerUnit { unit_price: d("2") });
        assert_eq!(unit.price(d("-3")).unwrap().amount, d("-6"));
    }

    /// Graduated pricing by walking the quantity one unit at a time: the
    /// oracle for integer quantities and integer bounds.
    fn graduated_by_units(bounds: &[u32], prices: &[i64], q: u32) -> Decimal {
        let mut total = Decimal::ZERO;
        for unit in 0..q {
            let tier = bounds
                .iter()
                .position(|b| unit < *b)
                .unwrap_or(bounds.len());
            total += Decimal::new(prices[tier], 4);
        }
        total
    }

    fn tiers_from(bounds: &[u32], prices: &[i64]) -> Vec<Tier> {
        let mut tiers: Vec<Tier> = bounds
            .iter()
            .zip(prices)
            .map(|(b, p)| Tier {
                up_to: Some(Decimal::from(*b)),
                unit_price: Decimal::new(*p, 4),
                flat_fee: Decimal::ZERO,
            })
            .collect();
        tiers.push(Tier {
            up_to: None,
            unit_price: Decimal::new(prices[bounds.len()], 4),
            flat_fee: Decimal::ZERO,
        });
        tiers
    }

    fn bounds_strategy() -> impl Strategy<Value = (Vec<u32>, Vec<i64>)> {
        prop::collection::btree_set(1u32..400, 0..4).prop_flat_map(|set| {
            let bounds: Vec<u32> = set.into_iter().collect();
            let n = bounds.len() + 1;
            (Just(bounds), prop::collection::vec(0i64..50_000, n))
        })
    }

    proptest! {
        #[test]
        fn graduated_equals_the_unit_by_unit_walk((bounds, prices) in bounds_strategy(), q in 0u32..600) {
            let rule = PriceRule::new(Charge::Graduated { tiers: tiers_from(&bounds, &prices) });
            prop_assert_eq!(rule.price(Decimal::from(q)).unwrap().amount, graduated_by_units(&bounds, &prices, q));
        }

        #[test]
        fn graduated_total_is_the_sum_of_its_increments((bounds, prices) in bounds_strategy(), a in 0u32..300, b in 0u32..300) {
            // However usage is split, pricing the summed quantity equals the
            // first part plus the marginal cost of the rest.
            let rule = PriceRule::new(Charge::Graduated { tiers: tiers_from(&bounds, &prices) });
            let whole = rule.price(Decimal::from(a + b)).unwrap().amount;
            let first = rule.price(Decimal::from(a)).unwrap().amount;
            let marginal = graduated_by_units(&bounds, &prices, a + b) - graduated_by_units(&bounds, &prices, a);
            prop_assert_eq!(whole, first + marginal);
        }

        #[test]
        fn one_tier_graduated_volume_and_per_unit_agree(price in 0i64..1_000_000, q in 0i64..10_000_000, s in 0u32..6) {
            let unit_price = Decimal::new(price, 4);
            let quantity = Decimal::new(q, s);
            let tiers = vec![Tier { up_to: None, unit_price, flat_fee: Decimal::ZERO }];
            let g = PriceRule::new(Charge::Graduated { tiers: tiers.clone() }).price(quantity).unwrap().amount;
            let v = PriceRule::new(Charge::Volume { tiers }).price(quantity).unwrap().amount;
            let u = PriceRule::new(Charge::PerUnit { unit_price }).price(quantity).unwrap().amount;
            prop_assert_eq!(g, u);
            prop_assert_eq!(v, u);
        }

        #[test]
        fn graduated_never_exceeds_volume_with_falling_prices((bounds, mut prices) in bounds_strategy(), q in 0u32..600) {
            // With prices falling tier by tier, volume pricing gives the
            // whole quantity the cheapest price reached: never more.
            prices.sort_unstable_by(|a, b| b.cmp(a));
            let tiers = tiers_from(&bounds, &prices);
            let g = PriceRule::new(Charge::Graduated { tiers: tiers.clone() }).price(Decimal::from(q)).unwrap().amount;
            let v = PriceRule::new(Charge::Volume { tiers }).price(Decimal::from(q)).unwrap().amount;
            prop_assert!(v <= g, "volume {} > graduated {}", v, g);
        }
    }
}
