//! The README's first command: `tally demo` on a fresh data directory.

mod common;

#[test]
fn demo_ingests_a_sample_and_a_second_run_counts_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = || {
        common::tally(&data)
            .args([
                "demo",
                "--exit-after-ingest",
                "--listen",
                "127.0.0.1:0",
                "--instances",
                "5",
                "--days",
                "1",
            ])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(out.contains("Created the first admin API key"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("accepted "))
        .expect("summary line");
    let accepted: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(accepted > 100, "{line}");
    assert!(line.contains("duplicates 0  rejected 0"), "{line}");
    let rated = out
        .lines()
        .find(|l| l.starts_with("rated "))
        .expect("rating line");
    assert!(rated.contains(&format!("{accepted} records")), "{rated}");
    assert!(rated.ends_with(" EUR"), "{rated}");
    // The month is invoiced and issued: three accounts, gapless numbers.
    let invoices: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("demo-"))
        .collect();
    assert_eq!(invoices.len(), 3, "{out}");
    assert!(
        invoices[0].contains("INV-000001") && invoices[0].contains("finalized"),
        "{out}"
    );
    assert!(out.contains("admin API key: tly_"), "{out}");
    assert!(out.contains("cost of ") && out.contains("Compute"), "{out}");

    let second = run();
    assert!(second.status.success());
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(
        out.contains(&format!("accepted 0  duplicates {accepted}  rejected 0")),
        "{out}"
    );
    assert!(
        out.contains(rated),
        "the same data rates to the same amount: {out}"
    );
    // The issued invoices are found again, not issued twice.
    for line in invoices {
        assert!(out.contains(line), "{line} again in {out}");
    }
}
