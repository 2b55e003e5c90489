//! A real HTTP receiver on loopback: hands every request it gets to the test, and answers as
//! the test's script says.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};

/// What the receiver answers to its n-th request (0-based).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    pub body: Bytes,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            body: Bytes::from_static(b"thanks"),
        }
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path_and_query: String,
    pub method: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

pub struct Receiver {
    pub addr: SocketAddr,
    requests: Mutex<mpsc::UnboundedReceiver<Received>>,
    count: Arc<AtomicUsize>,
    /// Requests being answered right now, and the most there have been at once.
    open: Arc<(AtomicUsize, AtomicUsize)>,
}

impl Receiver {
    /// Answers every request with `status`.
    pub async fn always(status: u16) -> Receiver {
        Receiver::scripted(move |_| Reply::status(status)).await
    }

    pub async fn scripted(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let count = Arc::new(AtomicUsize::new(0));
        let script: Script = Arc::new(script);
        let counter = count.clone();
        let open = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let opened = open.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, script, counter, opened) =
                    (tx.clone(), script.clone(), counter.clone(), opened.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (tx, script, counter, opened) =
                            (tx.clone(), script.clone(), counter.clone(), opened.clone());
                        async move {
                            let at = Instant::now();
                            let now_open = opened.0.fetch_add(1, Ordering::SeqCst) + 1;
                            opened.1.fetch_max(now_open, Ordering::SeqCst);
                            let n = counter.fetch_add(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let headers = parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                })
                                .collect();
                            let path_and_query = parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let _ = tx.send(Received {
                                path_and_query,
                                method: parts.method.to_string(),
                                headers,
                                body,
                                at,
                            });
                            let reply = script(n);
                            tokio::time::sleep(reply.delay).await;
                            opened.0.fetch_sub(1, Ordering::SeqCst);
                            let mut response = Response::new(Full::new(reply.body));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(reply.status).unwrap();
                            for (name, value) in reply.headers {
                                response.headers_mut().insert(name, value.parse().unwrap());
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            requests: Mutex::new(rx),
            count,
            open,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// The next request, or a panic after `timeout`.
    pub async fn next(&self, timeout: Duration) -> Received {
        tokio::time::timeout(timeout, self.requests.lock().await.recv())
            .await
            .unwrap_or_else(|_| panic!("no request within {timeout:?}"))
            .expect("receiver stopped")
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The most requests that were being answered at once.
    pub fn peak_open(&self) -> usize {
        self.open.1.load(Ordering::SeqCst)
    }
}
