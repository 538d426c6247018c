//! Compiles the few functions of the nbdkit plugin ABI that Rust cannot
//! define: the C variadic ones (`nbdkit_error`, `nbdkit_debug`,
//! `nbdkit_printf_intern`) and those taking a `va_list`.

fn main() {
    println!("cargo:rerun-if-changed=src/cabi/variadic.c");
    cc::Build::new()
        .file("src/cabi/variadic.c")
        .warnings(true)
        .compile("nbdkit_cabi_variadic");
}
