"""Self-signed TLS certificates made with `openssl`, for the tests and the benchmarks of the
haproxy handler's TLS termination (`vars.tls_certs`: one PEM per name, certificate + key)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_cert(
    directory: Path, name: str, days: int = 30, key_from: Path | None = None, file: str | None = None
) -> Path:
    """A self-signed certificate for DNS name `name`, and its key, in one PEM: `directory/<name>.pem`
    (or `file`). `key_from`: take the key of that other PEM instead (so it does not match)."""
    work = directory.parent / f".openssl-{name}"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", str(days), "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(work / "key.pem"), "-out", str(work / "cert.pem")],
        check=True, capture_output=True, timeout=30,
    )
    key = (work / "key.pem").read_text()
    if key_from is not None:
        text = key_from.read_text()
        key = text[text.index("-----BEGIN PRIVATE KEY-----"):]
    path = directory / (file or f"{name}.pem")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text((work / "cert.pem").read_text() + key)
    tmp.replace(path)  # as a renewal does it: a new file renamed over the old one
    return path


def make_expired_cert(directory: Path, name: str) -> Path:
    """A certificate valid only in January 2020 (`openssl ca` sets past dates; `req` cannot)."""
    work = directory.parent / f".ca-{name}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "index.txt").write_text("")
    (work / "serial").write_text("01\n")
    (work / "ca.cnf").write_text(
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
        "default_md = sha256\npolicy = p\nunique_subject = no\n[p]\ncommonName = supplied\n"
    )
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", f"/CN={name}", "-keyout", "key.pem", "-out", "req.csr"],
        check=True, capture_output=True, timeout=30, cwd=work,
    )
    subprocess.run(
        ["openssl", "ca", "-batch", "-notext", "-config", "ca.cnf", "-selfsign", "-keyfile", "key.pem", "-in",
         "req.csr", "-startdate", "20200101000000Z", "-enddate", "20200201000000Z", "-out", "cert.pem"],
        check=True, capture_output=True, timeout=30, cwd=work,
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.pem"
    path.write_text((work / "cert.pem").read_text() + (work / "key.pem").read_text())
    return path
