//! SQLite's WAL written in one system call per commit instead of two per page.
//!
//! SQLite appends each page of a commit to the write-ahead log as two `pwrite` calls — the
//! 24-byte frame header, then the page — and syncs the log once at the end of the commit
//! (`synchronous = FULL`). A tick writing 80 pages made 160 calls into the kernel for what is
//! one contiguous append: in a Telegram run of the channels bench the gateway made ~20 read and
//! write calls per reply against grammY's 4 (its sockets), ten of them WAL frames.
//!
//! This VFS is SQLite's default one with one change: a WAL file's writes that continue where the
//! previous one ended are gathered in memory and written together — before the log is synced,
//! read, truncated, sized, closed, locked or unlocked, and before any write elsewhere in the
//! file. Every other file (the database, its shared-memory index, journals) is the default
//! VFS's own file, untouched.
//!
//! Why this is safe: another connection reads a frame only after the writer has published it in
//! the shared-memory index, and under `synchronous = FULL` (which [`super::Store`] sets on every
//! connection, and its tests check) SQLite syncs the log before it publishes a commit — the
//! sync writes the gathered frames first. A crash before the sync loses what a crash before the
//! sync lost anyway: an uncommitted transaction. Under a weaker `synchronous` setting this would
//! not hold (frames are published unsynced), so the store never uses one.
//!
//! Installed by [`install`] from [`super::Store::connect`], before the first connection opens;
//! it becomes the process's default VFS.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use libsqlite3_sys as ffi;

/// The most a WAL file holds back before it writes (a tick's commit is ~350 KB).
const MAX_GATHERED: usize = 4 << 20;

/// The most the default VFS writes in one call: its `unixWrite` takes the low 17 bits of a
/// length (`nBuf &= 0x1ffff` in `seekAndWrite`), so a larger write goes out in pieces of at
/// most this, whole pages' worth.
const MAX_WRITE: usize = 31 * 4120;

/// Writes that went out gathered, and the write calls they stood for (see [`counts`]).
static FLUSHES: AtomicU64 = AtomicU64::new(0);
static GATHERED: AtomicU64 = AtomicU64::new(0);

/// How many gathered writes reached the file, and how many writes they held.
pub fn counts() -> (u64, u64) {
    (
        FLUSHES.load(Ordering::Relaxed),
        GATHERED.load(Ordering::Relaxed),
    )
}

/// A WAL file: SQLite's `sqlite3_file` header first (its methods are ours), the default VFS's
/// file in the same allocation after it.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Bytes not written yet, which belong at `start` in the file.
    pending: Vec<u8>,
    start: i64,
    /// Writes gathered in `pending`.
    writes: u64,
}

/// Where the default VFS's file sits in our allocation.
const REAL_OFFSET: usize = std::mem::size_of::<WalFile>().next_multiple_of(16);

/// The default VFS, which ours wraps.
struct Vfs(*mut ffi::sqlite3_vfs);

// SAFETY: both VFS objects live for the whole process and SQLite reads them from any thread
// (a VFS must be thread-safe; the default one is).
unsafe impl Send for Vfs {}
unsafe impl Sync for Vfs {}

/// Set once [`install`] registered ours.
static INSTALLED: OnceLock<Option<Vfs>> = OnceLock::new();

/// Registers the gathering VFS as SQLite's default. True once it is (every later call too);
/// false if SQLite has no default VFS to wrap.
pub fn install() -> bool {
    INSTALLED
        .get_or_init(|| {
            // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe; the VFS object
            // is leaked (SQLite keeps the pointer for the process's life) and is a copy of the
            // default VFS with xOpen, szOsFile and zName replaced — the default VFS's other
            // functions get our object, whose pAppData and mxPathname are the default's.
            unsafe {
                let real = ffi::sqlite3_vfs_find(std::ptr::null());
                if real.is_null() {
                    return None;
                }
                let mut ours = std::ptr::read(real);
                ours.szOsFile = c_int::try_from(REAL_OFFSET)
                    .ok()?
                    .checked_add((*real).szOsFile)?;
                ours.zName = c"switchboard-wal".as_ptr() as *const c_char;
                ours.pNext = std::ptr::null_mut();
                ours.xOpen = Some(open);
                let ours = Box::into_raw(Box::new(ours));
                if ffi::sqlite3_vfs_register(ours, 1) != ffi::SQLITE_OK {
                    drop(Box::from_raw(ours));
                    return None;
                }
                Some(Vfs(real))
            }
        })
        .is_some()
}

fn real_vfs() -> *mut ffi::sqlite3_vfs {
    match INSTALLED.get() {
        Some(Some(vfs)) => vfs.0,
        _ => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real = real_vfs();
    // SAFETY: `real` is the default VFS (set before this VFS was registered); `file` has
    // szOsFile bytes, more than the default VFS's file needs at either offset.
    unsafe {
        let Some(real_open) = real.as_ref().and_then(|r| r.xOpen) else {
            return ffi::SQLITE_CANTOPEN;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Anything but a WAL: the default VFS's file itself, at the start.
            return real_open(real, name, file, flags, out_flags);
        }
        let inner = (file as *mut u8).add(REAL_OFFSET) as *mut ffi::sqlite3_file;
        let rc = real_open(real, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        std::ptr::write(
            file as *mut WalFile,
            WalFile {
                base: ffi::sqlite3_file { pMethods: &METHODS },
                real: inner,
                pending: Vec::new(),
                start: 0,
                writes: 0,
            },
        );
        ffi::SQLITE_OK
    }
}

/// The default VFS's methods of `f`'s file.
///
/// SAFETY: `f` is a [`WalFile`] that `open` set up.
unsafe fn real_methods(f: &WalFile) -> &ffi::sqlite3_io_methods {
    unsafe { &*(*f.real).pMethods }
}

/// Writes what `f` holds back.
///
/// SAFETY: `f` is a [`WalFile`] that `open` set up.
unsafe fn flush(f: &mut WalFile) -> c_int {
    if f.pending.is_empty() {
        return ffi::SQLITE_OK;
    }
    let Some(write) = (unsafe { real_methods(f) }).xWrite else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    let mut rc = ffi::SQLITE_OK;
    let mut offset = f.start;
    for chunk in f.pending.chunks(MAX_WRITE) {
        // MAX_WRITE fits a c_int.
        let len = chunk.len() as c_int;
        rc = unsafe { write(f.real, chunk.as_ptr() as *const c_void, len, offset) };
        FLUSHES.fetch_add(1, Ordering::Relaxed);
        if rc != ffi::SQLITE_OK {
            break;
        }
        offset += chunk.len() as i64;
    }
    GATHERED.fetch_add(f.writes, Ordering::Relaxed);
    f.pending.clear();
    f.writes = 0;
    rc
}

/// `file` as ours. SAFETY: SQLite passes back a file `open` gave our methods to.
unsafe fn ours<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    unsafe { &mut *(file as *mut WalFile) }
}

/// Flushes, then hands the call to the default VFS's method `$m` with the same arguments.
macro_rules! flushed {
    ($name:ident, $m:ident ( $($arg:ident : $ty:ty),* )) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: see `ours` and `flush`.
            unsafe {
                let f = ours(file);
                let rc = flush(f);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                match real_methods(f).$m {
                    Some(m) => m(f.real $(, $arg)*),
                    None => ffi::SQLITE_IOERR,
                }
            }
        }
    };
}

flushed!(read, xRead(buf: *mut c_void, amount: c_int, offset: i64));
flushed!(truncate, xTruncate(size: i64));
flushed!(sync, xSync(flags: c_int));
flushed!(file_size, xFileSize(size: *mut i64));
flushed!(lock, xLock(level: c_int));
flushed!(unlock, xUnlock(level: c_int));
flushed!(check_reserved_lock, xCheckReservedLock(out: *mut c_int));
flushed!(file_control, xFileControl(op: c_int, arg: *mut c_void));
flushed!(shm_map, xShmMap(region: c_int, size: c_int, extend: c_int, out: *mut *mut c_void));
flushed!(shm_lock, xShmLock(offset: c_int, n: c_int, flags: c_int));
flushed!(shm_unmap, xShmUnmap(delete: c_int));
flushed!(fetch, xFetch(offset: i64, amount: c_int, out: *mut *mut c_void));
flushed!(unfetch, xUnfetch(offset: i64, p: *mut c_void));

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: see `ours` and `flush`; SQLite's buffer holds `amount` bytes.
    unsafe {
        let f = ours(file);
        let Ok(n) = usize::try_from(amount) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let end = f.start + f.pending.len() as i64;
        if f.pending.is_empty() || offset != end || f.pending.len() + n > MAX_GATHERED {
            let rc = flush(f);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            f.start = offset;
        }
        f.pending
            .extend_from_slice(std::slice::from_raw_parts(buf as *const u8, n));
        f.writes += 1;
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see `ours` and `flush`; after this SQLite frees the allocation without touching
    // it, so the struct is dropped in place here.
    unsafe {
        let f = ours(file);
        let flushed = flush(f);
        let closed = match real_methods(f).xClose {
            Some(close) => close(f.real),
            None => ffi::SQLITE_OK,
        };
        std::ptr::drop_in_place(file as *mut WalFile);
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see `ours`.
    unsafe {
        let f = ours(file);
        real_methods(f).xSectorSize.map_or(4096, |m| m(f.real))
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: see `ours`.
    unsafe {
        let f = ours(file);
        real_methods(f)
            .xDeviceCharacteristics
            .map_or(0, |m| m(f.real))
    }
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: see `ours`.
    unsafe {
        let f = ours(file);
        if let Some(m) = real_methods(f).xShmBarrier {
            m(f.real)
        }
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};
