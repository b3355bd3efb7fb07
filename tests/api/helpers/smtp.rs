//! A minimal SMTP server that accepts every mail and keeps it, so tests read real deliveries.
//! (Also used by the load benchmark.)
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone)]
pub struct CapturedMail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// When the sink accepted it (benchmarks measure delivery latency with it).
    pub received: std::time::SystemTime,
}

impl CapturedMail {
    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_owned()
    }

    /// The body, decoded when it is quoted-printable.
    pub fn body(&self) -> String {
        let (head, body) = self.data.split_once("\r\n\r\n").unwrap_or(("", ""));
        if !head.contains("Content-Transfer-Encoding: quoted-printable") {
            return body.to_owned();
        }
        let body = body.replace("=\r\n", "");
        let bytes = body.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'=', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The first http(s) link in the body.
    pub fn link(&self) -> String {
        let body = self.body();
        let start = body.find("http").expect("the mail has a link");
        body[start..].split_whitespace().next().unwrap().to_owned()
    }
}

#[derive(Clone)]
pub struct SmtpSink {
    pub port: u16,
    mails: Arc<Mutex<Vec<CapturedMail>>>,
    /// How many more mails to refuse with a temporary error (451) before accepting again;
    /// `usize::MAX` refuses until changed.
    refusals: Arc<std::sync::atomic::AtomicUsize>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (store, refuse) = (mails.clone(), refusals.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, store.clone(), refuse.clone()));
            }
        });
        SmtpSink {
            port,
            mails,
            refusals,
        }
    }

    /// Refuses the next `n` mails with `451` (a temporary failure).
    pub fn refuse_next(&self, n: usize) {
        self.refusals.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn all(&self) -> Vec<CapturedMail> {
        self.mails.lock().unwrap().clone()
    }

    pub fn to(&self, address: &str) -> Vec<CapturedMail> {
        self.all()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(address)))
            .collect()
    }

    /// Waits (at most 20 s) for the `n`th mail to `address` whose subject contains `subject`.
    pub async fn wait_for_nth(&self, address: &str, subject: &str, n: usize) -> CapturedMail {
        for _ in 0..400 {
            let found: Vec<CapturedMail> = self
                .to(address)
                .into_iter()
                .filter(|m| m.subject().contains(subject))
                .collect();
            if found.len() >= n {
                return found[n - 1].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "no mail #{n} '{subject}' to {address}; got {:?}",
            self.to(address)
        );
    }

    pub async fn wait_for(&self, address: &str, subject: &str) -> CapturedMail {
        self.wait_for_nth(address, subject, 1).await
    }
}

async fn session(
    socket: TcpStream,
    store: Arc<Mutex<Vec<CapturedMail>>>,
    refusals: Arc<std::sync::atomic::AtomicUsize>,
) {
    let (reader, mut writer) = socket.into_split();
    let mut lines = BufReader::new(reader).lines();
    if writer.write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink\r\n250-SMTPUTF8\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            use std::sync::atomic::Ordering;
            let refused = refusals
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                    0 => None,
                    usize::MAX => Some(usize::MAX),
                    n => Some(n - 1),
                })
                .is_ok();
            if refused {
                b"451 try again later\r\n"
            } else {
                from = address(&line);
                to.clear();
                b"250 OK\r\n"
            }
        } else if upper.starts_with("RCPT TO:") {
            to.push(address(&line));
            b"250 OK\r\n"
        } else if upper == "DATA" {
            if writer.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let mut data = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "." {
                    break;
                }
                let line = line
                    .strip_prefix('.')
                    .filter(|_| line.starts_with(".."))
                    .unwrap_or(&line);
                data.push_str(line);
                data.push_str("\r\n");
            }
            store.lock().unwrap().push(CapturedMail {
                from: from.clone(),
                to: to.clone(),
                data,
                received: std::time::SystemTime::now(),
            });
            b"250 OK queued\r\n"
        } else if upper == "QUIT" {
            let _ = writer.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 OK\r\n"
        };
        if writer.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn address(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line.rfind('>').unwrap_or(line.len());
    line[start..end].to_owned()
}
