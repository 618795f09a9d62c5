//! Credentials stay with their registry, and nothing leaves HTTPS (issue 25): hostile servers
//! on loopback redirect across origins, challenge after a redirect, redirect a token realm,
//! and redirect downloads from HTTPS to plain HTTP. Every server records every request, and
//! the tests check that no secret reached any server but the registry and the realm it named.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use super::harness::*;
use super::http::{Fault, HttpServer};
use super::registry_access::{
    assert_no_secret, basic_auth, registry_answer, small_image, with_password, Answer, Home, Places, Seen, TlsServer,
    TOKEN,
};
use super::registry_server::{IDENTITY_TOKEN, PASSWORD};

/// Another origin (`https://localhost:PORT`, where the registry is `127.0.0.1`): blob storage
/// that challenges whoever it is sent to, and a `/steal` realm that grants anything.
fn storage(dir: &Path) -> TlsServer {
    TlsServer::start(dir, |port, r: &Seen| -> Answer {
        let challenge = match r.target.split('/').nth(1) {
            Some("steal") => return ("200 OK".into(), vec![], br#"{"token":"stolen"}"#.to_vec()),
            Some("basic") => r#"Basic realm="storage""#.to_string(),
            _ => format!(r#"Bearer realm="https://localhost:{port}/steal",service="storage""#),
        };
        ("401 Unauthorized".into(), vec![("WWW-Authenticate".into(), challenge)], vec![])
    })
}

/// A project, a small image (its manifest digest and blobs) and a challenging storage host.
fn scene() -> (TestProject, String, BTreeMap<String, Vec<u8>>, TlsServer) {
    let p = TestProject::new();
    let (manifest, blobs) = small_image(&p.path("image"));
    let storage = storage(&p.path("storage"));
    (p, manifest, blobs, storage)
}

/// Each secret the tests use, as it could travel: a password, its Basic header, a registry
/// token, an identity token.
fn secrets() -> Vec<String> {
    vec![PASSWORD.into(), basic_auth(PASSWORD), TOKEN.into(), IDENTITY_TOKEN.into()]
}

/// Asserts that nothing `server` was sent carries a secret: no `Authorization`, and no secret
/// in any header or body.
fn received_no_secret(what: &str, seen: &[Seen]) {
    for r in seen {
        assert!(r.authorization.is_none(), "{what}: credentials sent to {}: {r:?}", r.host);
        for s in secrets() {
            let in_headers = r.headers.iter().any(|(_, v)| v.contains(&s));
            let in_body = r.body.windows(s.len()).any(|w| w == s.as_bytes());
            assert!(!in_headers && !in_body && !r.target.contains(&s), "{what}: a secret reached {}: {r:?}", r.host);
        }
    }
}

/// A registry's places on its own origin (`https://127.0.0.1:PORT`), blobs perhaps elsewhere.
fn own_places(port: u16, blob_redirect: Option<String>) -> Places {
    let own = format!("https://127.0.0.1:{port}");
    Places { realm: format!("{own}/token"), upload: format!("{own}/upload/u1"), blob_redirect }
}

/// `pull` of `manifest` from `registry` with the test password, trusting both servers' CAs.
fn pull(p: &TestProject, registry: &TlsServer, other: &TlsServer, manifest: &str, store: &str) -> Output {
    with_password(
        p.cmd()
            .env("IMGBUILD_STORE", p.path(store))
            .arg("pull")
            .args(["--ca-file", registry.ca.to_str().unwrap(), "--ca-file", other.ca.to_str().unwrap()])
            .arg(format!("{}/team/t@{manifest}", registry.host())),
    )
}

#[test]
fn a_challenge_after_a_redirect_to_another_origin_gets_no_credential() {
    let (p, manifest, blobs, storage) = scene();
    let port = storage.acceptor.addr.port();
    // A Bearer registry whose blob GETs go to the storage host, which challenges with a realm
    // of its own (Bearer) or asks for a password (Basic).
    for (i, kind) in ["bearer", "basic"].into_iter().enumerate() {
        let places = move |own| own_places(own, Some(format!("https://localhost:{port}/{kind}")));
        let registry = TlsServer::registry(&p.path(&format!("registry-{kind}")), places, blobs.clone());
        let out = pull(&p, &registry, &storage, &manifest, &format!("store-{i}"));
        received_no_secret(kind, &storage.seen.lock().unwrap());
        assert_exit(&out, 5);
        let err = stderr(&out);
        let said = format!("a redirect led to https://localhost:{port}, which asked for credentials");
        assert!(err.contains(&said) && err.contains("sent none there"), "{kind}: {err}");
        assert_no_secret(&p, &[out], &secrets());
    }
    let seen = storage.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|r| r.target.starts_with("/bearer/")) && seen.iter().any(|r| r.target.starts_with("/basic/"))
    );
    assert!(!seen.iter().any(|r| r.target.starts_with("/steal")), "the storage host's realm was asked: {seen:?}");
    received_no_secret("storage", &seen);
}

#[test]
fn a_redirect_to_another_port_or_host_carries_no_authorization() {
    let p = TestProject::new();
    let (manifest, blobs) = small_image(&p.path("image"));
    // Storage that serves every blob to anyone, at another port of the same host and at
    // another host name.
    let served = blobs.clone();
    let storage = TlsServer::start(&p.path("storage"), move |_, r| {
        let digest = r.target.rsplit('/').next().unwrap_or_default();
        served.get(digest).map_or(("404 Not Found".into(), vec![], vec![]), |b| ("200 OK".into(), vec![], b.clone()))
    });
    let port = storage.acceptor.addr.port();
    for (i, host) in ["127.0.0.1", "localhost"].into_iter().enumerate() {
        let places = move |own| own_places(own, Some(format!("https://{host}:{port}/blobs")));
        let registry = TlsServer::registry(&p.path(&format!("registry-{i}")), places, blobs.clone());
        let out = pull(&p, &registry, &storage, &manifest, &format!("store-{i}"));
        assert_ok(&out);
        assert_no_secret(&p, &[out], &secrets());
        let own = registry.seen.lock().unwrap().clone();
        assert!(own.iter().any(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))), "{own:?}");
    }
    let seen = storage.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().filter(|r| r.target.starts_with("/blobs/")).count(), 2 * 2, "{seen:?}");
    received_no_secret("storage", &seen);
}

#[test]
fn a_token_realm_that_redirects_gets_no_password_and_no_identity_token_across() {
    let (p, manifest, blobs, storage) = scene();
    let port = storage.acceptor.addr.port();
    // The registry's realm is its own, but answers every token request with a 307 (which
    // keeps a POST's body) to the other origin.
    let registry = TlsServer::start(&p.path("registry"), move |own, r| {
        if r.target.starts_with("/token") {
            return (
                "307 Temporary Redirect".into(),
                vec![("Location".into(), format!("https://localhost:{port}/steal"))],
                vec![],
            );
        }
        registry_answer(r, &own_places(own, None), &blobs)
    });
    let said =
        format!("redirected to https://localhost:{port}/steal; imgbuild sends credentials only to the token realm");
    let out = pull(&p, &registry, &storage, &manifest, "store-password");
    assert_exit(&out, 5);
    assert!(stderr(&out).contains(&said), "{}", stderr(&out));

    // An identity token (Docker's `identitytoken`), exchanged by a POST whose body carries it.
    let home = Home::new(&p);
    let docker = home.dir.join(".docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auths = format!(r#"{{"auths":{{"{}":{{"identitytoken":"{IDENTITY_TOKEN}"}}}}}}"#, registry.host());
    std::fs::write(docker.join("config.json"), auths).unwrap();
    let by_token = home
        .cmd(&p)
        .env("IMGBUILD_STORE", p.path("store-token"))
        .args(["pull", "--ca-file", registry.ca.to_str().unwrap(), "--ca-file", storage.ca.to_str().unwrap()])
        .arg(format!("{}/team/t@{manifest}", registry.host()))
        .output()
        .unwrap();
    assert_exit(&by_token, 5);
    assert!(stderr(&by_token).contains(&said), "{}", stderr(&by_token));
    let posted = registry.seen.lock().unwrap().iter().filter(|r| r.method == "POST" && r.target == "/token").count();
    assert_eq!(posted, 1, "the identity token went once, to the realm the registry named");
    assert!(storage.seen.lock().unwrap().is_empty(), "{:?}", storage.seen.lock().unwrap());
    assert_no_secret(&p, &[out, by_token], &secrets());
}

/// An HTTPS server that redirects every request to the same path on `to` (plain HTTP).
fn downgrading(dir: &Path, to: String) -> TlsServer {
    TlsServer::start(dir, move |_, r| {
        ("302 Found".into(), vec![("Location".into(), format!("{to}{}", r.target))], vec![])
    })
}

#[test]
fn no_download_follows_a_redirect_out_of_https() {
    let p = TestProject::new();
    let file = "zookeeper-3.4.10.tar.gz";
    let data = p.input(file).to_vec();
    let plain = HttpServer::start();
    plain.serve(&format!("dist/{file}"), data.clone(), Fault::None);
    let tls = downgrading(&p.path("tls"), format!("http://{}", plain.addr));
    let url = format!("https://127.0.0.1:{}/dist/{file}", tls.acceptor.addr.port());
    // Downloads trust the system's certificates; the test's CA stands for them here.
    let trusting = |args: &[&str]| p.cmd().env("SSL_CERT_FILE", &tls.ca).args(args).output().unwrap();
    let said = format!("refusing a redirect from {url} to http://{}/dist/{file}: it leaves HTTPS", plain.addr);

    for args in [vec!["prefetch", url.as_str()], vec!["recipe", url.as_str()], vec!["recipe", "--add", url.as_str()]] {
        let out = trusting(&args);
        assert_exit(&out, 3);
        assert!(stderr(&out).contains(&said), "{args:?}: {}", stderr(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("sha256"), "{args:?}: a pin was printed");
    }
    // A build whose recipe names the HTTPS URL (mirrors left out): refused, nothing built.
    let hex = super::fixtures::sha256_hex(&data);
    p.write_recipe(
        "zookeeper.toml",
        &format!("name = \"zookeeper\"\nversion = \"1\"\n[[source]]\nurl = \"{url}\"\nsha256 = \"{hex}\"\n[unpack]\nstrip_components = 1\nprefix = \"/usr/local/zookeeper\"\n"),
    );
    p.add_base();
    let out = trusting(&["build"]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains(&said), "{}", stderr(&out));
    assert_eq!(plain.total_requests(), 0, "a download went over plain HTTP");
    // The same server's file over HTTPS, without the redirect, is fetched (the CA is trusted).
    let direct = TlsServer::start(&p.path("direct"), move |_, _| ("200 OK".into(), vec![], data.clone()));
    let out = p
        .cmd()
        .env("SSL_CERT_FILE", &direct.ca)
        .args(["prefetch", &format!("https://127.0.0.1:{}/dist/{file}", direct.acceptor.addr.port())])
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&hex), "{}", String::from_utf8_lossy(&out.stdout));
}
