//! The incident page in a real browser (Debian's `chromium`, headless): it loads with no console
//! errors (a script error or a Content-Security-Policy violation would print one), lists the
//! storm's incident, a filter URL narrows the list, and the incident page shows the timeline
//! and the sparkline. A screenshot of each page is saved under the test's output directory.

use crate::incidents::start_with_storm;
use crate::support::moto::Moto;
use std::path::PathBuf;
use std::process::Command;

fn chromium() -> PathBuf {
    let p = PathBuf::from("/usr/bin/chromium");
    assert!(
        p.is_file(),
        "chromium not found: `apt-get install -y chromium` (scripts/test.sh does)"
    );
    p
}

/// Runs headless Chromium on `url` with `extra` args and a fresh profile; returns (stdout,
/// stderr).
pub(crate) fn browse(url: &str, extra: &[&str]) -> (String, String) {
    let profile_dir = tempfile::tempdir().expect("profile");
    let profile = profile_dir.path();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1280,1000",
            // Lets the page's fetches finish (virtual time) before the DOM or pixels are taken.
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Content Security Policy")
        })
        .collect()
}

#[test]
fn the_page_lists_filters_and_shows_an_incident_in_headless_chromium() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let moto = Moto::start();
    let dir = tempfile::tempdir().expect("dir");
    let (agg, id) = start_with_storm(&rt, &moto, dir.path());
    let base = agg.url();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("incidents_page");
    std::fs::create_dir_all(&shots).expect("screenshot dir");

    let (dom, err) = browse(&format!("{base}/incidents"), &["--dump-dom"]);
    assert!(
        console_errors(&err).is_empty(),
        "console: {:?}",
        console_errors(&err)
    );
    assert!(
        dom.contains(&format!("data-id=\"{id}\"")),
        "the storm's incident is listed:\n{dom}"
    );
    assert!(
        dom.contains("data-state=\"open\""),
        "counts by state:\n{dom}"
    );
    assert!(dom.contains("data-severity="), "counts by severity:\n{dom}");

    let (dom, err) = browse(&format!("{base}/incidents?family=memory"), &["--dump-dom"]);
    assert!(
        console_errors(&err).is_empty(),
        "console: {:?}",
        console_errors(&err)
    );
    assert!(
        !dom.contains(&format!("data-id=\"{id}\"")) && dom.contains("id=\"empty\""),
        "the filter URL narrows the list:\n{dom}"
    );
    let (dom, _) = browse(
        &format!("{base}/incidents?namespace=shop&family=cpu"),
        &["--dump-dom"],
    );
    assert!(dom.contains(&format!("data-id=\"{id}\"")), "{dom}");

    let (dom, err) = browse(&format!("{base}/incidents/{id}"), &["--dump-dom"]);
    assert!(
        console_errors(&err).is_empty(),
        "console: {:?}",
        console_errors(&err)
    );
    assert!(
        dom.contains("id=\"timeline\"") && dom.contains("opened"),
        "timeline:\n{dom}"
    );
    assert!(
        dom.contains("id=\"sparkline\"")
            && dom.contains("class=\"score\"")
            && dom.contains("class=\"threshold\""),
        "sparkline:\n{dom}"
    );
    assert!(
        dom.contains("checkout-0-0") && dom.contains("node-2"),
        "affected pods and nodes:\n{dom}"
    );

    for (name, path) in [
        ("list.png", "/incidents".to_owned()),
        ("incident.png", format!("/incidents/{id}")),
    ] {
        let png = shots.join(name);
        let _ = std::fs::remove_file(&png);
        browse(
            &format!("{base}{path}"),
            &[&format!("--screenshot={}", png.display())],
        );
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 10_000,
            "{} is a real screenshot ({len} bytes)",
            png.display()
        );
    }
    agg.stop();
}
