//! Feature `python`: the binary gets an rpath to the libpython it links (pyo3 links it without
//! one), so it starts wherever that interpreter's library lives. Without the feature: nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "python")]
    pyo3_build_config::add_libpython_rpath_link_args();
}
