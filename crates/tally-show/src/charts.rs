//! Charts drawn as SVG by the server: no script, no request to anything
//! else. Bar heights are computed with decimals and rounded to whole
//! pixels; amounts are printed as given.

use rust_decimal::Decimal;

/// One bar: its label (a day, a service) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Shown under the bar (every few bars when there are many).
    pub label: String,
    /// The value; negative values draw as zero height.
    pub value: Decimal,
}

/// Escapes text for XML and HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const WIDTH: i64 = 720;
const HEIGHT: i64 = 220;
const PLOT: i64 = 180;

/// A bar chart with an accessible title and one `<title>` per bar (shown
/// as a tooltip and read by screen readers).
pub fn bar_chart(title: &str, unit: &str, bars: &[Bar]) -> String {
    let max = bars
        .iter()
        .map(|b| b.value)
        .fold(Decimal::ZERO, Decimal::max);
    let n = bars.len().max(1) as i64;
    let slot = (WIDTH - 40) / n;
    let bar_w = (slot - 2).max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-labelledby=\"chart-title\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" class=\"chart\">\
         <title id=\"chart-title\">{}</title>\
         <line x1=\"30\" y1=\"{PLOT}\" x2=\"{WIDTH}\" y2=\"{PLOT}\" stroke=\"#555\"/>",
        escape(title)
    );
    let label_every = (n / 8).max(1) as usize;
    for (i, b) in bars.iter().enumerate() {
        let h = if max.is_zero() || b.value <= Decimal::ZERO {
            0
        } else {
            (b.value * Decimal::from(PLOT - 10) / max)
                .round()
                .try_into()
                .unwrap_or(0i64)
        };
        let x = 32 + i as i64 * slot;
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"{bar_w}\" height=\"{h}\" fill=\"#1f5fa8\"><title>{}: {} {}</title></rect>",
            PLOT - h,
            escape(&b.label),
            tally_core::rounded_amount(b.value, unit),
            escape(unit)
        ));
        if i % label_every == 0 {
            svg.push_str(&format!(
                "<text x=\"{x}\" y=\"{}\" font-size=\"10\" fill=\"#222\">{}</text>",
                PLOT + 14,
                escape(&b.label)
            ));
        }
    }
    svg.push_str(&format!(
        "<text x=\"0\" y=\"12\" font-size=\"10\" fill=\"#222\">{} {}</text></svg>",
        // Labels are for reading: a currency's amounts in its minor unit
        // (any other unit as it is); bar heights use the exact values.
        tally_core::rounded_amount(max, unit),
        escape(unit)
    ));
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_bar_fills_the_plot_and_labels_are_escaped() {
        let bars = vec![
            Bar {
                label: "a<b".into(),
                value: Decimal::new(50, 1),
            },
            Bar {
                label: "c".into(),
                value: Decimal::new(100, 1),
            },
            Bar {
                label: "d".into(),
                value: Decimal::new(-1, 0),
            },
        ];
        let svg = bar_chart("Cost & usage", "EUR", &bars);
        assert!(svg.contains("<title id=\"chart-title\">Cost &amp; usage</title>"));
        assert!(svg.contains("height=\"170\""), "{svg}");
        assert!(svg.contains("height=\"85\""), "{svg}");
        assert!(svg.contains("height=\"0\""), "{svg}");
        assert!(svg.contains("a&lt;b: 5.00 EUR"), "{svg}");
        assert!(!svg.contains("a<b"));
        // Labels are rounded to the currency's minor unit; a bare unit is
        // printed as it is.
        let exact = [Bar {
            label: "x".into(),
            value: "64.596724687".parse().unwrap(),
        }];
        assert!(bar_chart("t", "EUR", &exact).contains(">64.60 EUR</text>"));
        assert!(bar_chart("t", "GiB", &exact).contains(">64.596724687 GiB</text>"));
    }
}
