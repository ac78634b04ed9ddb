//! SQLite's memory: mimalloc, the process's allocator, instead of glibc's `malloc`, and no
//! memory statistics (SQLite's default keeps them under a global mutex taken on every
//! allocation). In a Telegram run of the channels bench, glibc's allocator and those mutexes were
//! ~5 % of the SQLite writer's samples; figures in `docs/BENCHMARKS.md`.
//!
//! Both are process-wide settings that SQLite takes only before it initialises itself, so
//! [`configure`] runs first thing in `main`, before any connection opens. Where it cannot (a
//! test binary that opened a connection first) SQLite keeps its defaults, which work the same.

use std::ffi::{c_int, c_void};

use libsqlite3_sys as ffi;

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    // SQLite never asks for a negative size; treat one as zero rather than wrap.
    unsafe { libmimalloc_sys::mi_malloc(n.max(0) as usize) }
}

unsafe extern "C" fn x_free(p: *mut c_void) {
    unsafe { libmimalloc_sys::mi_free(p) }
}

unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    unsafe { libmimalloc_sys::mi_realloc(p, n.max(0) as usize) }
}

/// The usable size of an allocation (at least what was asked for; SQLite may use the rest).
unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    let size = unsafe { libmimalloc_sys::mi_usable_size(p) };
    c_int::try_from(size).unwrap_or(c_int::MAX)
}

/// Rounded up to 8 bytes, as SQLite's own allocator does.
unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    n.checked_add(7).map_or(n, |m| m & !7)
}

unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shutdown(_: *mut c_void) {}

/// Which of the two settings SQLite took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Configured {
    pub allocator: bool,
    pub no_statistics: bool,
}

/// Points SQLite at mimalloc and turns its memory statistics off. Call before anything opens a
/// SQLite connection; later calls change nothing (SQLite refuses once initialised).
pub fn configure() -> Configured {
    let methods = ffi::sqlite3_mem_methods {
        xMalloc: Some(x_malloc),
        xFree: Some(x_free),
        xRealloc: Some(x_realloc),
        xSize: Some(x_size),
        xRoundup: Some(x_roundup),
        xInit: Some(x_init),
        xShutdown: Some(x_shutdown),
        pAppData: std::ptr::null_mut(),
    };
    // SAFETY: both options are documented for use before `sqlite3_initialize`; SQLite answers
    // SQLITE_MISUSE (and changes nothing) after it. SQLITE_CONFIG_MALLOC copies the struct
    // before it returns, so a local is enough; every function in it is safe to call from any
    // thread (mimalloc is thread-safe).
    unsafe {
        let allocator = ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_MALLOC,
            &methods as *const ffi::sqlite3_mem_methods,
        ) == ffi::SQLITE_OK;
        let no_statistics =
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int) == ffi::SQLITE_OK;
        Configured {
            allocator,
            no_statistics,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_functions_keep_sqlites_contract() {
        unsafe {
            assert_eq!(x_roundup(1), 8);
            assert_eq!(x_roundup(8), 8);
            assert_eq!(x_roundup(c_int::MAX), c_int::MAX);
            let p = x_malloc(100);
            assert!(!p.is_null());
            assert!(x_size(p) >= 100);
            let q = x_realloc(p, 5000);
            assert!(!q.is_null());
            assert!(x_size(q) >= 5000);
            x_free(q);
        }
    }
}
