//! Documents built to hurt the gateway (issue "Hardening"): a PDF whose form draws itself (a
//! stack overflow in the extractor), a PDF whose stream inflates to 256 MiB, and HTML that made
//! the old extractor quadratic. Each is refused or read within a time limit, the gateway keeps
//! answering, and the test process — which runs the gateway — does not grow: the PDF is read in
//! a child process. One test in this binary, so the memory figure is this story's alone.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Backend, TestApp};
use serde_json::Value;

/// A PDF of `objects` (numbered from 1; the first is the catalog), with a correct xref table.
fn pdf(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\nendstream");
    out
}

/// One page whose resources hold form XObject 4, and whose content draws it.
fn one_page(content: Vec<u8>, form: Vec<u8>) -> Vec<u8> {
    pdf(&[
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /XObject << /X1 4 0 R >> /Font << /F1 5 0 R >> >> /Contents 6 0 R >>".to_vec(),
        form,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec(),
        content,
    ])
}

/// A form XObject that draws itself: the extractor follows it for ever.
fn self_drawing_form() -> Vec<u8> {
    one_page(
        stream("", b"BT /F1 12 Tf 72 712 Td (Hello) Tj ET /X1 Do"),
        stream(
            "/Type /XObject /Subtype /Form /BBox [0 0 10 10] /Resources << /XObject << /X1 4 0 R >> >>",
            b"/X1 Do",
        ),
    )
}

/// A page whose content stream is small compressed and 256 MiB inflated.
fn decompression_bomb() -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![b' '; 1 << 20];
    for _ in 0..256 {
        z.write_all(&block).expect("compress");
    }
    let compressed = z.finish().expect("compress");
    one_page(
        stream("/Filter /FlateDecode", &compressed),
        stream("/Type /XObject /Subtype /Form /BBox [0 0 10 10]", b""),
    )
}

/// A small readable PDF, to show the reader still works after the hostile ones.
fn readable() -> Vec<u8> {
    one_page(
        stream(
            "",
            b"BT /F1 12 Tf 72 712 Td (Magnesium before bed helps some people sleep) Tj ET",
        ),
        stream("/Type /XObject /Subtype /Form /BBox [0 0 10 10]", b""),
    )
}

/// Peak resident memory of this process (the gateway's), in KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn upload(app: &TestApp, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned());
    let form = reqwest::multipart::Form::new().part("file", part);
    let res = app
        .http
        .post(format!("{}/v1/knowledge/documents", app.base))
        .bearer_auth(&app.admin_key)
        .multipart(form)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("upload");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_pdfs_are_refused_without_hurting_the_gateway() {
    let app = TestApp::spawn(Backend::Sqlite).await.expect("sqlite app");
    let bomb = decompression_bomb();
    assert!(
        bomb.len() < 1024 * 1024,
        "the bomb is small: {}",
        bomb.len()
    );
    let before = peak_rss_kib();

    let started = Instant::now();
    let (status, body) = upload(&app, "loop.pdf", self_drawing_form()).await;
    assert_eq!(status, 400, "{body}");
    println!("{body}");
    assert_eq!(body["error"]["code"], "unreadable_pdf", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let (status, body) = upload(&app, "bomb.pdf", bomb).await;
    assert_eq!(status, 400, "{body}");
    println!("{body}");
    assert_eq!(body["error"]["code"], "unreadable_pdf", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("memory") || message.contains("too long"),
        "the reason is said: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    let grown_mib = peak_rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 100,
        "the gateway's peak memory grew by {grown_mib} MiB reading hostile PDFs"
    );

    // The gateway still answers, nothing was stored, and a good PDF is read.
    let (status, _) = app.get(&app.admin_key, "/healthz").await;
    assert_eq!(status.as_u16(), 200);
    let (_, listed) = app.get(&app.admin_key, "/v1/knowledge/documents").await;
    assert_eq!(
        listed["documents"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );
    let (status, body) = upload(&app, "ok.pdf", readable()).await;
    assert_eq!(status, 201, "{body}");
    let (_, hits) = app
        .get(&app.admin_key, "/v1/knowledge/search?q=magnesium")
        .await;
    assert!(
        hits["hits"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("Magnesium")),
        "{hits}"
    );
    app.stop().await;
}
