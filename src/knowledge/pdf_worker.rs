//! Reading an uploaded PDF where a hostile file cannot hurt the gateway.
//!
//! A PDF is a stranger's program: a form XObject that draws itself overflows the extractor's
//! stack (an abort `catch_unwind` cannot catch), and a small stream can inflate to gigabytes. So
//! the text layer is read in a child process — this same binary, started with [`WORKER_ARG`] —
//! that limits itself before it reads a byte (data segment [`MEMORY_LIMIT`], CPU seconds, no files
//! written) and writes at most [`MAX_TEXT_BYTES`] of text. The gateway waits at most
//! [`PdfReader::timeout`] and kills it after; at most [`PdfReader::concurrency`] run at once,
//! the others wait in line. Whatever the child does, the gateway answers `unreadable_pdf` with
//! what went wrong (too deep, too much memory, too slow, damaged).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::extract::{MAX_PDF_BYTES, tidy_pdf_text};

/// The hidden first argument that turns the binary into a PDF reader (see `main`).
pub const WORKER_ARG: &str = "__extract-pdf";
/// The child's data segment limit (heap and anonymous mappings): a 256 MiB inflated stream needs
/// more than this, a 16 MiB PDF of text does not.
pub const MEMORY_LIMIT: u64 = 384 * 1024 * 1024;
/// CPU seconds the child may use before the kernel stops it.
const CPU_LIMIT_SECS: u64 = 30;
/// Most text one document may yield (every format): beyond it the upload is refused.
pub const MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;
/// Exit code of a child that read the file and found it unreadable (the reason on stderr).
const EXIT_UNREADABLE: i32 = 3;

/// Runs PDF extraction in bounded child processes.
#[derive(Clone)]
pub struct PdfReader {
    program: PathBuf,
    pub timeout: Duration,
    pub concurrency: usize,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for PdfReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdfReader")
            .field("program", &self.program)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for PdfReader {
    /// This binary as the worker (the installed `switchboard`).
    fn default() -> Self {
        let program = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("switchboard"));
        PdfReader::new(program, Duration::from_secs(20), 2)
    }
}

impl PdfReader {
    /// `program` must be a `switchboard` binary (tests name the one cargo built).
    pub fn new(program: PathBuf, timeout: Duration, concurrency: usize) -> PdfReader {
        let concurrency = concurrency.max(1);
        PdfReader {
            program,
            timeout,
            concurrency,
            slots: Arc::new(Semaphore::new(concurrency)),
        }
    }

    /// The text layer of `bytes`, or why it could not be read (said to the uploader).
    pub async fn text(&self, bytes: Vec<u8>) -> Result<String, String> {
        if bytes.len() > MAX_PDF_BYTES {
            return Err("the PDF is larger than 16 MiB".into());
        }
        if !bytes.starts_with(b"%PDF-") {
            return Err("not a PDF (no %PDF- header)".into());
        }
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| "the PDF reader is shutting down".to_owned())?;
        match tokio::time::timeout(self.timeout, self.run(bytes)).await {
            Ok(outcome) => outcome,
            // The child is killed as its handle drops (`kill_on_drop`).
            Err(_) => Err(format!(
                "reading the PDF took longer than {} s (it was stopped)",
                self.timeout.as_secs()
            )),
        }
    }

    async fn run(&self, bytes: Vec<u8>) -> Result<String, String> {
        let mut child = tokio::process::Command::new(&self.program)
            .arg(WORKER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_BACKTRACE", "0")
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                tracing::error!(program = %self.program.display(), error = %e, "cannot start the PDF reader");
                "the PDF reader could not be started".to_owned()
            })?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err("the PDF reader could not be started".into());
        };
        let feed = async move {
            // A child that dies early closes the pipe: its exit status says why.
            let _ = stdin.write_all(&bytes).await;
            drop(stdin);
        };
        let mut text = Vec::new();
        let mut why = Vec::new();
        let mut stdout = stdout.take(MAX_TEXT_BYTES as u64 + 1);
        let mut stderr = stderr.take(4096);
        let read_out = stdout.read_to_end(&mut text);
        let read_err = stderr.read_to_end(&mut why);
        let ((), out, err) = tokio::join!(feed, read_out, read_err);
        out.map_err(|e| format!("reading the PDF reader's output: {e}"))?;
        let _ = err;
        if text.len() > MAX_TEXT_BYTES {
            return Err(format!(
                "the PDF's text is larger than {} MiB",
                MAX_TEXT_BYTES / (1024 * 1024)
            ));
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("waiting for the PDF reader: {e}"))?;
        let why = String::from_utf8_lossy(&why);
        if status.success() {
            return String::from_utf8(text).map_err(|_| "the PDF's text is not UTF-8".to_owned());
        }
        if status.code() == Some(EXIT_UNREADABLE) {
            return Err(why.trim().to_owned());
        }
        Err(describe_crash(&status, &why))
    }
}

/// Why a child that did not exit normally stopped, in the uploader's words.
fn describe_crash(status: &std::process::ExitStatus, stderr: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    if stderr.contains("overflowed its stack") {
        return "the PDF could not be read: its content is nested too deeply (e.g. a form that draws itself)".into();
    }
    if stderr.contains("memory allocation") || stderr.contains("capacity overflow") {
        return format!(
            "the PDF could not be read: it needs more than {} MiB of memory (a decompression bomb?)",
            MEMORY_LIMIT / (1024 * 1024)
        );
    }
    match status.signal() {
        Some(libc::SIGXCPU) | Some(libc::SIGKILL) => {
            "reading the PDF took too long (it was stopped)".into()
        }
        Some(_) | None => {
            "the PDF could not be read: the reader crashed on it (damaged or hostile file)".into()
        }
    }
}

/// The child: limit this process, read a PDF from stdin, write its text to stdout. Exit 0 with
/// text, [`EXIT_UNREADABLE`] with the reason on stderr; a crash is read by the parent.
pub fn child_main() -> std::process::ExitCode {
    use std::io::{Read, Write};
    limit_self();
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(MAX_PDF_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
    {
        eprintln!("reading the upload: {e}");
        return std::process::ExitCode::from(EXIT_UNREADABLE as u8);
    }
    let outcome = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(&bytes));
    let text = match outcome {
        Ok(Ok(text)) => tidy_pdf_text(&text),
        Ok(Err(e)) => {
            eprintln!("the PDF could not be read: {e}");
            return std::process::ExitCode::from(EXIT_UNREADABLE as u8);
        }
        Err(_) => {
            eprintln!("the PDF could not be read (damaged or unsupported)");
            return std::process::ExitCode::from(EXIT_UNREADABLE as u8);
        }
    };
    if text.trim().is_empty() {
        eprintln!("the PDF has no text layer (a scan?)");
        return std::process::ExitCode::from(EXIT_UNREADABLE as u8);
    }
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        return std::process::ExitCode::from(EXIT_UNREADABLE as u8);
    }
    std::process::ExitCode::SUCCESS
}

/// Sets this process's own limits; a limit the kernel refuses is left as it was (the parent's
/// time limit still holds).
fn limit_self() {
    let set = |resource, value: u64| {
        let limit = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: setrlimit reads a valid, initialised struct; it only changes this process.
        unsafe { libc::setrlimit(resource, &limit) };
    };
    set(libc::RLIMIT_DATA, MEMORY_LIMIT);
    set(libc::RLIMIT_CPU, CPU_LIMIT_SECS);
    set(libc::RLIMIT_FSIZE, 0);
    set(libc::RLIMIT_CORE, 0);
    // The binary allocates with mimalloc (see `main`), which answers a failed allocation with
    // NULL: a fallible reservation (`try_reserve`, as in `read_to_end` while a stream inflates)
    // then comes back as an error the PDF library swallows, and a bomb reads as "no text". Here
    // any allocation the limit refuses ends the child the way an infallible one does, saying so.
    // SAFETY: registers a function that only writes a static message and aborts; it allocates
    // nothing and is safe to call from any thread.
    unsafe { libmimalloc_sys::mi_register_error(Some(out_of_memory), std::ptr::null_mut()) };
}

/// mimalloc's error callback in the child: on `ENOMEM`, the message [`describe_crash`] reads,
/// then abort. Other errors keep mimalloc's default (it returns NULL or ignores them).
unsafe extern "C" fn out_of_memory(code: std::ffi::c_int, _: *mut std::ffi::c_void) {
    if code == libc::ENOMEM {
        const MESSAGE: &[u8] = b"memory allocation failed: the PDF reader's memory limit\n";
        // SAFETY: writes a static buffer to stderr; a failed write changes nothing.
        unsafe { libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len()) };
        std::process::abort();
    }
}
