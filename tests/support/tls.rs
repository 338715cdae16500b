//! Test certificates made with the real `openssl`: a CA and leaf certificates signed by it, in
//! PEM files `ca.crt`/`ca.key` and `<name>.crt`/`<name>.key`, valid for two days.

use std::path::Path;
use std::process::Command;

/// A server certificate for 127.0.0.1 (the `ext` of [`certificates`]).
pub const SERVER: (&str, &str) = (
    "server",
    "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
);

/// A client certificate (the `ext` of [`certificates`]).
pub const CLIENT: (&str, &str) = (
    "client",
    "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a CA into `dir`, then for each `(name, extensions)` a P-256 key and a certificate
/// signed by the CA with those X.509v3 extensions (`openssl x509 -extfile` syntax).
pub fn certificates(dir: &Path, leaves: &[(&str, &str)]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=selfheal-test-ca",
    ]);
    openssl(dir, &ca);
    for (name, ext) in leaves {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let extfile = format!("{name}.ext");
        std::fs::write(dir.join(&extfile), ext).expect("ext file");
        let mut req = vec!["req"];
        req.extend(ec);
        let subj = format!("/CN={name}");
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
    }
}
