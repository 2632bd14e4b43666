//! Invoices as PDF, written in Rust with `pdf-writer`.
//!
//! The page text is [`invoice_text`]: the same lines, in the same order,
//! that the PDF shows, so a test can extract the PDF's text and compare it
//! word for word with the invoice document. The font is the standard
//! Helvetica (every PDF reader has it, nothing is embedded) in
//! WinAnsiEncoding: Latin-1 letters print as they are; characters outside
//! it print as `?` (the JSON document keeps them exactly).

use pdf_writer::{Content, Name, Pdf, Rect, Ref, Str, TextStr};
use rust_decimal::Decimal;
use tally_core::billing::{InvoiceDocument, Party};

const PAGE_W: f32 = 595.0;
const PAGE_H: f32 = 842.0;
const MARGIN: f32 = 40.0;
const BODY: f32 = 8.5;
const SMALL: f32 = 7.5;
/// Table rows (main and detail lines) per page before a break.
const ROWS_PER_PAGE: usize = 54;

/// One line of text on a page: pieces at x positions (right-aligned where
/// `right` is set), in one font size.
#[derive(Debug, Clone, PartialEq)]
pub struct TextLine {
    /// Font size in points.
    pub size: f32,
    /// Bold (Helvetica-Bold).
    pub bold: bool,
    /// Pieces: (x, right-aligned, text).
    pub pieces: Vec<(f32, bool, String)>,
}

impl TextLine {
    fn left(size: f32, text: impl Into<String>) -> TextLine {
        TextLine {
            size,
            bold: false,
            pieces: vec![(MARGIN, false, text.into())],
        }
    }

    fn bold(mut self) -> TextLine {
        self.bold = true;
        self
    }

    /// The line's text, pieces separated by single spaces.
    pub fn text(&self) -> String {
        self.pieces
            .iter()
            .map(|(_, _, t)| t.as_str())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn money(d: Decimal, currency: &str) -> String {
    format!("{d} {currency}")
}

fn instant(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn party_lines(title: &str, p: &Party) -> Vec<String> {
    let mut out = vec![title.to_string()];
    if !p.name.is_empty() {
        out.push(p.name.clone());
    }
    out.extend(p.address.iter().cloned());
    if let Some(e) = &p.email {
        out.push(e.clone());
    }
    if let Some(t) = &p.tax_id {
        out.push(format!("Tax id: {t}"));
    }
    out
}

/// The invoice's pages as lines of text: header (seller, buyer, number,
/// dates), the table of lines with their service periods, the totals.
pub fn invoice_text(doc: &InvoiceDocument) -> Vec<Vec<TextLine>> {
    let cur = doc.currency.code();
    let title = match doc.status.as_str() {
        "draft" => "DRAFT INVOICE (not issued)",
        "void" => "INVOICE (VOID)",
        _ => "INVOICE",
    };
    let mut head = vec![TextLine::left(16.0, title).bold(), TextLine::left(4.0, "")];
    let seller = party_lines("From", &doc.seller);
    let buyer = party_lines("Bill to", &doc.buyer);
    for i in 0..seller.len().max(buyer.len()) {
        let mut line = TextLine {
            size: BODY,
            bold: i == 0,
            pieces: Vec::new(),
        };
        line.pieces
            .push((MARGIN, false, seller.get(i).cloned().unwrap_or_default()));
        line.pieces
            .push((320.0, false, buyer.get(i).cloned().unwrap_or_default()));
        head.push(line);
    }
    head.push(TextLine::left(6.0, ""));
    let meta = [
        (
            "Invoice number:",
            doc.number
                .clone()
                .unwrap_or_else(|| "(assigned when issued)".into()),
        ),
        ("Invoice id:", doc.invoice_id.clone()),
        ("Account:", doc.account_id.clone()),
        (
            "Billing period:",
            format!(
                "{} ({} to {})",
                doc.period,
                instant(doc.period_start),
                instant(doc.period_end)
            ),
        ),
        (
            "Issued:",
            doc.issued_at
                .map_or_else(|| "-".into(), |t| t.date_naive().to_string()),
        ),
        (
            "Due:",
            doc.due_at
                .map_or_else(|| "-".into(), |t| t.date_naive().to_string()),
        ),
        ("Currency:", cur.to_string()),
    ];
    for (k, v) in meta {
        head.push(TextLine {
            size: BODY,
            bold: false,
            pieces: vec![(MARGIN, false, k.into()), (130.0, false, v)],
        });
    }
    head.push(TextLine::left(6.0, ""));
    let table_head = TextLine {
        size: BODY,
        bold: true,
        pieces: vec![
            (MARGIN, false, "#".into()),
            (60.0, false, "Project".into()),
            (270.0, false, "Meter".into()),
            (PAGE_W - MARGIN, true, "Amount".into()),
        ],
    };

    let mut rows = Vec::new();
    for l in &doc.lines {
        rows.push(TextLine {
            size: BODY,
            bold: false,
            pieces: vec![
                (MARGIN, false, l.line_no.to_string()),
                (60.0, false, l.project_id.clone()),
                (270.0, false, l.meter.clone()),
                (PAGE_W - MARGIN, true, money(l.amount, cur)),
            ],
        });
        let mut detail = format!(
            "{} to {}: {} {}",
            instant(l.service_start),
            instant(l.service_end),
            l.quantity.normalize(),
            l.unit
        );
        if let Some(p) = l.unit_price {
            detail.push_str(&format!(" at {} {cur} per {}", p.normalize(), l.unit));
        }
        if l.correction {
            detail.push_str(" (correction: late usage of an invoiced period)");
        }
        rows.push(TextLine {
            size: SMALL,
            bold: false,
            pieces: vec![(60.0, false, detail)],
        });
    }

    let total_line = |label: String, amount: Decimal, bold: bool| TextLine {
        size: BODY,
        bold,
        pieces: vec![
            (330.0, false, label),
            (PAGE_W - MARGIN, true, money(amount, cur)),
        ],
    };
    let mut totals = vec![TextLine::left(6.0, "")];
    totals.push(total_line("Subtotal".into(), doc.subtotal, false));
    for d in &doc.discounts {
        totals.push(total_line(format!("Discount {}", d.code), -d.amount, false));
    }
    if !doc.commitment_top_up.is_zero() {
        totals.push(total_line(
            "Minimum commitment top-up".into(),
            doc.commitment_top_up,
            false,
        ));
    }
    totals.push(total_line("Taxable amount".into(), doc.taxable, false));
    for t in &doc.taxes {
        totals.push(total_line(
            format!(
                "{} ({}% of {})",
                t.name,
                (t.rate * Decimal::ONE_HUNDRED).normalize(),
                t.base
            ),
            t.amount,
            false,
        ));
    }
    totals.push(total_line("Total due".into(), doc.total, true));

    // Pages: the header on the first, the table header on each, then rows;
    // the totals follow the last row (on a new page if they do not fit).
    let mut pages: Vec<Vec<TextLine>> = Vec::new();
    let mut page = head;
    page.push(table_head.clone());
    let mut used = 0;
    for r in rows {
        if used == ROWS_PER_PAGE {
            pages.push(std::mem::take(&mut page));
            page.push(table_head.clone());
            used = 0;
        }
        page.push(r);
        used += 1;
    }
    if used + totals.len() > ROWS_PER_PAGE + 4 {
        pages.push(std::mem::take(&mut page));
    }
    page.extend(totals);
    pages.push(page);
    let n = pages.len();
    for (i, p) in pages.iter_mut().enumerate() {
        p.push(TextLine::left(6.0, ""));
        p.push(TextLine::left(
            SMALL,
            format!("{} page {} of {}", doc.invoice_id, i + 1, n),
        ));
    }
    pages
}

/// Helvetica advance widths (1/1000 em) of the characters amounts are
/// made of, for right alignment; other characters count as 556.
fn width(text: &str, size: f32, bold: bool) -> f32 {
    let units: u32 = text
        .chars()
        .map(|c| match c {
            '0'..='9' => 556,
            '.' | ',' | ' ' => 278,
            '-' => 333,
            'E' | 'U' | 'R' | 'C' | 'H' | 'F' | 'G' | 'B' | 'P' | 'S' | 'D' => {
                if bold {
                    722
                } else {
                    667
                }
            }
            'A'..='Z' => 667,
            'a'..='z' => 500,
            _ => 556,
        })
        .sum();
    units as f32 * size / 1000.0
}

/// Text as WinAnsi bytes: ASCII and Latin-1 as they are, the euro sign,
/// anything else `?`.
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c as u32 {
            0x20..=0x7e | 0xa0..=0xff => c as u8,
            0x20ac => 0x80,
            _ => b'?',
        })
        .collect()
}

/// Renders an invoice document as a PDF.
pub fn invoice_pdf(doc: &InvoiceDocument) -> Vec<u8> {
    let pages = invoice_text(doc);
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let info = Ref::new(5);
    let first_page = 6;
    let page_ids: Vec<Ref> = (0..pages.len())
        .map(|i| Ref::new(first_page + 2 * i as i32))
        .collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(pages.len() as i32);
    pdf.type1_font(regular)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    let title = format!(
        "Invoice {}",
        doc.number.as_deref().unwrap_or(&doc.invoice_id)
    );
    pdf.document_info(info)
        .title(TextStr(&title))
        .producer(TextStr("Tally"));
    for (i, lines) in pages.iter().enumerate() {
        let page_id = page_ids[i];
        let content_id = Ref::new(page_id.get() + 1);
        let mut page = pdf.page(page_id);
        page.parent(tree)
            .media_box(Rect::new(0.0, 0.0, PAGE_W, PAGE_H))
            .contents(content_id);
        page.resources()
            .fonts()
            .pair(Name(b"F1"), regular)
            .pair(Name(b"F2"), bold);
        drop(page);
        let mut content = Content::new();
        let mut y = PAGE_H - MARGIN;
        for line in lines {
            y -= line.size * 1.35;
            for (x, right, text) in &line.pieces {
                if text.is_empty() {
                    continue;
                }
                let x = if *right {
                    x - width(text, line.size, line.bold)
                } else {
                    *x
                };
                content.begin_text();
                content.set_font(Name(if line.bold { b"F2" } else { b"F1" }), line.size);
                content.next_line(x, y);
                content.show(Str(&win_ansi(text)));
                content.end_text();
            }
        }
        pdf.stream(content_id, &content.finish());
    }
    pdf.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An issued invoice with a discount, a correction line, a tax and a
    /// buyer address outside ASCII.
    fn document(lines: usize) -> InvoiceDocument {
        let line = |n: usize| {
            serde_json::json!({
                "line_no": n, "project_id": format!("p-{n:03}"), "meter": "vcpu.hours",
                "plan_id": "standard",
                "service_start": "2026-10-01T00:00:00Z", "service_end": "2026-11-01T00:00:00Z",
                "quantity": "2976", "unit": "vCPU-hour", "unit_price": "0.01",
                "amount": "29.76", "exact_amount": "29.76", "correction": n == 2
            })
        };
        let total = Decimal::new(2976, 2) * Decimal::from(lines as u32);
        serde_json::from_value(serde_json::json!({
            "invoice_id": "post-2026-10", "number": "INV-000007", "status": "finalized",
            "account_id": "post",
            "seller": {"name": "Example Cloud AG", "address": ["Cloudweg 1", "8000 Zürich"], "tax_id": "CHE-123"},
            "buyer": {"name": "Post GmbH", "address": ["Hauptstraße 1", "10115 Berlin"], "email": "billing@post.example"},
            "period": "2026-10", "period_start": "2026-10-01T00:00:00Z", "period_end": "2026-11-01T00:00:00Z",
            "currency": "EUR", "issued_at": "2026-11-02T08:00:00Z", "due_at": "2026-12-02T08:00:00Z",
            "lines": (1..=lines).map(line).collect::<Vec<_>>(),
            "subtotal": total.to_string(),
            "discounts": [{"code": "TEN", "amount": "1.00"}],
            "commitment_top_up": "0",
            "taxable": (total - Decimal::ONE).to_string(),
            "taxes": [{"name": "VAT", "rate": "0.19", "base": (total - Decimal::ONE).to_string(), "amount": "5.46"}],
            "total": (total - Decimal::ONE + Decimal::new(546, 2)).to_string()
        }))
        .unwrap()
    }

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn the_pdf_text_is_the_invoice_text_word_for_word() {
        for lines in [1, 130] {
            let doc = document(lines);
            let pdf = invoice_pdf(&doc);
            let parsed = lopdf::Document::load_mem(&pdf).expect("a PDF that parses");
            let pages: Vec<u32> = parsed.get_pages().keys().copied().collect();
            let expected = invoice_text(&doc);
            assert_eq!(
                pages.len(),
                expected.len(),
                "pages of a {lines}-line invoice"
            );
            let extracted = parsed.extract_text(&pages).expect("text extracts");
            let want: Vec<String> = expected
                .iter()
                .flatten()
                .flat_map(|l| words(&l.text()))
                .collect();
            assert_eq!(words(&extracted), want);
            for needle in [
                "INV-000007",
                "Hauptstraße",
                "Zürich",
                "2026-12-02",
                "Total due",
            ] {
                assert!(extracted.contains(needle), "{needle} in the PDF text");
            }
            assert_eq!(extracted.contains("(correction:"), lines > 1);
        }
    }

    #[test]
    fn the_first_page_reads_as_an_invoice() {
        let doc = document(3);
        let text: Vec<String> = invoice_text(&doc)[0].iter().map(TextLine::text).collect();
        insta::assert_snapshot!(text.join("\n"));
    }

    #[test]
    fn text_outside_latin_1_becomes_a_question_mark() {
        assert_eq!(win_ansi("Straße €5 ✓"), b"Stra\xdfe \x805 ?".to_vec());
    }

    #[test]
    fn amounts_right_align_by_their_digits() {
        assert!(width("1000.00 EUR", 10.0, false) > width("9.00 EUR", 10.0, false));
    }
}
