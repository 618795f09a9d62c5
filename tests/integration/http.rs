//! A small HTTP/1.1 file server on 127.0.0.1 for tests, with the faults downloads meet:
//! 404s, connections dropped mid-body, different bytes. It supports `Range` so resumption
//! is exercised, counts requests, and stops (joining its thread) when dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Clone)]
pub enum Fault {
    None,
    NotFound,
    /// The first `times` responses send the full Content-Length but only `after` bytes.
    Truncate {
        after: usize,
        times: usize,
    },
    /// Sends the body in 64 KiB pieces, `pause_ms` apart.
    Slow {
        pause_ms: u64,
    },
    /// Sends the headers and a little of the body, then nothing for 20 s.
    Stall,
    /// Answers `302 Found` with this `Location`.
    Redirect(String),
}

struct Route {
    body: Arc<Vec<u8>>,
    fault: Fault,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    requests: Vec<(String, Option<String>)>,
}

/// Accepts connections on a free loopback port and hands each to `handler` on its own
/// thread, until dropped (which stops the loop and joins it).
pub struct Acceptor {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    pub fn spawn(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Acceptor {
        Acceptor::spawn_at("127.0.0.1", handler)
    }

    /// The same on another loopback address (`127.0.0.2` stands for another host).
    pub fn spawn_at(ip: &str, handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Acceptor {
        let listener = TcpListener::bind((ip, 0)).expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handler = Arc::new(handler);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let handler = Arc::clone(&handler);
                std::thread::spawn(move || handler(conn));
            }
        });
        Acceptor { addr, stop, thread: Some(thread) }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct HttpServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _acceptor: Acceptor,
}

impl HttpServer {
    pub fn start() -> HttpServer {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let acceptor = Acceptor::spawn(move |conn| {
            let _ = handle(conn, &shared);
        });
        HttpServer { addr: acceptor.addr, state, _acceptor: acceptor }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn serve(&self, path: &str, body: Vec<u8>, fault: Fault) {
        let path = format!("/{}", path.trim_start_matches('/'));
        self.state.lock().unwrap().routes.insert(path, Route { body: Arc::new(body), fault });
    }

    /// Requests received for `path`, with their `Range` header.
    pub fn requests(&self, path: &str) -> Vec<Option<String>> {
        let path = format!("/{}", path.trim_start_matches('/'));
        self.state.lock().unwrap().requests.iter().filter(|(p, _)| *p == path).map(|(_, r)| r.clone()).collect()
    }

    /// How many requests' paths contain `part`.
    pub fn requests_matching(&self, part: &str) -> usize {
        self.state.lock().unwrap().requests.iter().filter(|(p, _)| p.contains(part)).count()
    }

    pub fn total_requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}

/// One HTTP request's head, read with bounded sizes and a timeout; the body is left unread.
pub struct Request {
    /// The request target: path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub reader: BufReader<TcpStream>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub fn read_request(conn: &TcpStream) -> std::io::Result<Request> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    (&mut reader).take(8192).read_line(&mut request_line)?;
    let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut line = String::new();
        if (&mut reader).take(8192).read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Request { target, headers, reader })
}

fn handle(mut conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let request = read_request(&conn)?;
    let path = request.target.clone();
    let range = request.header("range").map(str::to_string);
    let (body, fault) = {
        let mut st = state.lock().unwrap();
        st.requests.push((path.clone(), range.clone()));
        match st.routes.get_mut(&path) {
            None => (None, Fault::NotFound),
            Some(route) => {
                let fault = route.fault.clone();
                if let Fault::Truncate { after, times } = route.fault {
                    route.fault = if times > 1 { Fault::Truncate { after, times: times - 1 } } else { Fault::None };
                }
                (Some(Arc::clone(&route.body)), fault)
            }
        }
    };
    if let Fault::Redirect(to) = &fault {
        let head = format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return conn.write_all(head.as_bytes());
    }
    let body = match (body, &fault) {
        (Some(b), f) if !matches!(f, Fault::NotFound) => b,
        _ => {
            conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found")?;
            return Ok(());
        }
    };
    let start = match (&range, &fault) {
        (Some(r), _) => {
            r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|s| s.parse::<usize>().ok())
        }
        _ => None,
    };
    let (status, slice, extra) = match start {
        Some(s) if s < body.len() => (
            "206 Partial Content",
            &body[s..],
            format!("Content-Range: bytes {s}-{}/{}\r\n", body.len() - 1, body.len()),
        ),
        _ => ("200 OK", &body[..], String::new()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\n{extra}Connection: close\r\n\r\n",
        slice.len()
    );
    conn.write_all(head.as_bytes())?;
    match fault {
        Fault::Truncate { after, .. } => conn.write_all(&slice[..after.min(slice.len())])?,
        Fault::Slow { pause_ms } => {
            for piece in slice.chunks(64 * 1024) {
                conn.write_all(piece)?;
                conn.flush()?;
                std::thread::sleep(Duration::from_millis(pause_ms));
            }
        }
        Fault::Stall => {
            conn.write_all(&slice[..slice.len().min(1000)])?;
            conn.flush()?;
            std::thread::sleep(Duration::from_secs(20));
        }
        _ => conn.write_all(slice)?,
    }
    conn.flush()?;
    Ok(())
}
