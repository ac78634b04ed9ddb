//! The migrations are embedded by `sqlx::migrate!`, which cannot tell cargo about them: a new or
//! changed migration must rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
