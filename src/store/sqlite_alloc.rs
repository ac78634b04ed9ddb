//! SQLite's memory: mimalloc, the process's allocator, instead of glibc's `malloc`, and no
//! memory statistics (SQLite's default keeps them under a global mutex taken on every
//! allocation). In a Telegram run of the channels bench, glibc's allocator and those mutexes were
//! ~5 % of the SQLite writer's samples; figures in `docs/BENCHMARKS.md`.
//!
//! And SQLite's page cache, wrapped so that a commit does not walk the whole cache for nothing
//! ([`PageCache`]).
//!
//! All three are process-wide settings that SQLite takes only before it initialises itself, so
//! [`configure`] runs first thing in `main`, before any connection opens. Where it cannot (a
//! test binary that opened a connection first) SQLite keeps its defaults, which work the same.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Which of the settings SQLite took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Configured {
    pub allocator: bool,
    pub no_statistics: bool,
    pub page_cache: bool,
}

/// Points SQLite at mimalloc, turns its memory statistics off and wraps its page cache. Call
/// before anything opens a SQLite connection; later calls change nothing (SQLite refuses once
/// initialised).
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
            page_cache: PageCache::install(),
        }
    }
}

/// SQLite's own page cache with one thing changed: a truncation that has nothing to drop is not
/// passed on.
///
/// Why: at the end of every write transaction the pager truncates its cache to the database's
/// size (`sqlite3PcacheTruncate(dbSize)`). SQLite's cache keeps the largest page number it has
/// seen since the last truncation and, when that is more than a hash table's length beyond the
/// limit, walks every page it holds. When a B-tree rebalance swaps two page numbers it parks a
/// page at the locking page's number (`PENDING_BYTE / page size + 1`: page 262,145 with 4 KiB
/// pages, far past the end of any database under 1 GiB) for a moment — so after nearly every
/// commit that split a page, the writer's 32 MiB cache was walked page by page although nothing
/// was past the end: 5–6 % of the gateway's samples in a Telegram run of the channels bench, on
/// the writer's thread, whose commits every message waits for. This wrapper keeps its own bound
/// of the page numbers in the cache, not counting that parking place, and skips a truncation at
/// or above it.
///
/// The bound is safe: every page enters the cache through `xFetch` or `xRekey`, which raise it
/// (only a rekey *to* the locking page does not, and the same rebalance step moves the page
/// away again before anything else touches the cache); a truncation that is passed on lowers it
/// to what is left. Anything the bound cannot vouch for goes to SQLite's cache as before.
pub struct PageCache {
    inner: *mut ffi::sqlite3_pcache,
    /// No page in the cache has a larger number (the rebalance's parking place aside).
    bound: c_uint,
    /// The number of the locking page, which no real page has.
    locking_page: c_uint,
}

/// SQLite's default page-cache methods, which [`PageCache`] forwards to.
static DEFAULT: OnceLock<Methods> = OnceLock::new();

/// The methods as SQLite gave them: functions, and a `pArg` SQLite passes back to them.
struct Methods(ffi::sqlite3_pcache_methods2);

// SAFETY: SQLite's default page cache is thread-safe (it takes its own mutexes); the struct is
// only read after it is set.
unsafe impl Send for Methods {}
unsafe impl Sync for Methods {}

/// Truncations skipped because nothing was past the limit (see [`PageCache`]).
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// SQLite's locking byte: the page holding it is never used by a database.
const PENDING_BYTE: u64 = 0x4000_0000;

// SAFETY (for the methods below): SQLite calls them with a cache `xCreate` returned, from the
// connection that owns it, one call at a time; `DEFAULT` is set before the wrapper is installed.
impl PageCache {
    /// Installs the wrapper around SQLite's default cache. False if SQLite refused (it is
    /// initialised already): it then keeps its own, which works the same.
    unsafe fn install() -> bool {
        let mut default = std::mem::MaybeUninit::<ffi::sqlite3_pcache_methods2>::zeroed();
        // SAFETY: GETPCACHE2 fills the struct with the current (default) methods.
        let got =
            unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, default.as_mut_ptr()) };
        if got != ffi::SQLITE_OK {
            return false;
        }
        // SAFETY: filled by SQLite above.
        let default = unsafe { default.assume_init() };
        if default.xCreate.is_none() || DEFAULT.set(Methods(default)).is_err() {
            return false;
        }
        let methods = ffi::sqlite3_pcache_methods2 {
            iVersion: 1,
            pArg: std::ptr::null_mut(),
            xInit: Some(Self::x_init),
            xShutdown: Some(Self::x_shutdown),
            xCreate: Some(Self::x_create),
            xCachesize: Some(Self::x_cachesize),
            xPagecount: Some(Self::x_pagecount),
            xFetch: Some(Self::x_fetch),
            xUnpin: Some(Self::x_unpin),
            xRekey: Some(Self::x_rekey),
            xTruncate: Some(Self::x_truncate),
            xDestroy: Some(Self::x_destroy),
            xShrink: Some(Self::x_shrink),
        };
        // SAFETY: PCACHE2 copies the struct; every function in it forwards to the default.
        unsafe {
            ffi::sqlite3_config(
                ffi::SQLITE_CONFIG_PCACHE2,
                &methods as *const ffi::sqlite3_pcache_methods2,
            ) == ffi::SQLITE_OK
        }
    }

    /// Truncations skipped so far, process-wide.
    pub fn skipped() -> u64 {
        SKIPPED.load(Ordering::Relaxed)
    }

    fn defaults() -> &'static ffi::sqlite3_pcache_methods2 {
        &DEFAULT
            .get()
            .expect("the page cache wrapper is installed only after DEFAULT is set")
            .0
    }

    unsafe fn of<'a>(cache: *mut ffi::sqlite3_pcache) -> &'a mut PageCache {
        unsafe { &mut *cache.cast::<PageCache>() }
    }

    unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
        let d = Self::defaults();
        d.xInit.map_or(ffi::SQLITE_OK, |f| unsafe { f(d.pArg) })
    }

    unsafe extern "C" fn x_shutdown(_: *mut c_void) {
        let d = Self::defaults();
        if let Some(f) = d.xShutdown {
            unsafe { f(d.pArg) }
        }
    }

    unsafe extern "C" fn x_create(
        page_size: c_int,
        extra: c_int,
        purgeable: c_int,
    ) -> *mut ffi::sqlite3_pcache {
        let Some(create) = Self::defaults().xCreate else {
            return std::ptr::null_mut();
        };
        let inner = unsafe { create(page_size, extra, purgeable) };
        if inner.is_null() {
            return inner;
        }
        let locking_page = u64::try_from(page_size)
            .ok()
            .filter(|&size| size > 0)
            .and_then(|size| c_uint::try_from(PENDING_BYTE / size + 1).ok())
            .unwrap_or(c_uint::MAX);
        Box::into_raw(Box::new(PageCache {
            inner,
            bound: 0,
            locking_page,
        }))
        .cast()
    }

    unsafe extern "C" fn x_cachesize(cache: *mut ffi::sqlite3_pcache, n: c_int) {
        if let Some(f) = Self::defaults().xCachesize {
            unsafe { f(Self::of(cache).inner, n) }
        }
    }

    unsafe extern "C" fn x_pagecount(cache: *mut ffi::sqlite3_pcache) -> c_int {
        Self::defaults()
            .xPagecount
            .map_or(0, |f| unsafe { f(Self::of(cache).inner) })
    }

    unsafe extern "C" fn x_fetch(
        cache: *mut ffi::sqlite3_pcache,
        key: c_uint,
        create: c_int,
    ) -> *mut ffi::sqlite3_pcache_page {
        let Some(fetch) = Self::defaults().xFetch else {
            return std::ptr::null_mut();
        };
        let this = unsafe { Self::of(cache) };
        let page = unsafe { fetch(this.inner, key, create) };
        if !page.is_null() {
            this.bound = this.bound.max(key);
        }
        page
    }

    unsafe extern "C" fn x_unpin(
        cache: *mut ffi::sqlite3_pcache,
        page: *mut ffi::sqlite3_pcache_page,
        discard: c_int,
    ) {
        if let Some(f) = Self::defaults().xUnpin {
            unsafe { f(Self::of(cache).inner, page, discard) }
        }
    }

    unsafe extern "C" fn x_rekey(
        cache: *mut ffi::sqlite3_pcache,
        page: *mut ffi::sqlite3_pcache_page,
        old: c_uint,
        new: c_uint,
    ) {
        let this = unsafe { Self::of(cache) };
        if let Some(f) = Self::defaults().xRekey {
            unsafe { f(this.inner, page, old, new) }
        }
        if new != this.locking_page {
            this.bound = this.bound.max(new);
        }
    }

    unsafe extern "C" fn x_truncate(cache: *mut ffi::sqlite3_pcache, limit: c_uint) {
        let this = unsafe { Self::of(cache) };
        if limit > this.bound {
            SKIPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(f) = Self::defaults().xTruncate {
            unsafe { f(this.inner, limit) }
        }
        this.bound = limit.saturating_sub(1);
    }

    unsafe extern "C" fn x_destroy(cache: *mut ffi::sqlite3_pcache) {
        // SAFETY: `cache` came from `Box::into_raw` in `x_create`; SQLite destroys it once.
        let this = unsafe { Box::from_raw(cache.cast::<PageCache>()) };
        if let Some(f) = Self::defaults().xDestroy {
            unsafe { f(this.inner) }
        }
    }

    unsafe extern "C" fn x_shrink(cache: *mut ffi::sqlite3_pcache) {
        if let Some(f) = Self::defaults().xShrink {
            unsafe { f(Self::of(cache).inner) }
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
