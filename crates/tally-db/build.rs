//! `sqlx::migrate!` embeds the migration files at compile time; without
//! this, a new migration file would not rebuild the crate and a warm build
//! would run without it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
